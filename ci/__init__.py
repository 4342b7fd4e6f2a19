"""Scripts CI runs beyond the plain test command (the kernel-TLS runner)."""
