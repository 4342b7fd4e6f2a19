"""Pipe readers, the pool worker and reference workers for trade-balancer's pipes."""
