/* lb-bridge's batch cut, compiled: workers.jsproto.cut_batch_counted_py is the specification
 * (same results, same ValueError text, for every buffer and every pair of Python ints).
 *
 * The pipe framing is [u32 little-endian length][payload]. From the start of `data`, take whole
 * messages while they fit in max_batch bytes; a first message bigger than max_batch that is
 * wholly in `data` goes alone. A length over max_message raises at the first message and stops
 * the batch before any later one. No mutable global state: safe in subinterpreters. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>

#define HEADER 4

static uint32_t read_u32_le(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A Python int as a long long, saturated: beyond the range it is LLONG_MIN / LLONG_MAX, which
 * compare with a buffer size or a u32 length exactly as the unbounded int would. */
static int saturated(PyObject *obj, const char *name, long long *out) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (value == -1 && PyErr_Occurred()) return -1;
    *out = overflow > 0 ? LLONG_MAX : overflow < 0 ? LLONG_MIN : value;
    return 0;
}

static PyObject *cut_batch_counted(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *keywords[] = {"data", "max_batch", "max_message", NULL};
    PyObject *data, *max_batch_obj, *max_message_obj;
    long long max_batch, max_message;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:cut_batch_counted", keywords, &data,
                                     &max_batch_obj, &max_message_obj)
        || saturated(max_batch_obj, "max_batch", &max_batch) < 0
        || saturated(max_message_obj, "max_message", &max_message) < 0)
        return NULL;

    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (view.itemsize != 1) { /* array('I'), a cast memoryview: len() would count items, not bytes */
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_TypeError, "data must be a buffer of bytes, not of %zd-byte items",
                            view.itemsize);
    }
    const unsigned char *buf = view.buf;
    /* Overflow: every offset lies in [0, end] with end <= PY_SSIZE_T_MAX < 2**63, and a
     * message adds at most HEADER + (2**32 - 1), so pos + HEADER + length is computed in
     * uint64_t without wrapping; it is stored back into pos only once it is <= limit <= end.
     * A negative max_batch stops at the first message like 0 does (every stop is >= HEADER). */
    const uint64_t end = (uint64_t)view.len;
    const uint64_t limit = max_batch < 0 ? 0 : (uint64_t)max_batch < end ? (uint64_t)max_batch : end;
    uint64_t pos = 0;
    Py_ssize_t count = 0;
    while (end - pos >= HEADER) {
        uint32_t length = read_u32_le(buf + pos); /* pos + HEADER <= end: inside the buffer */
        if ((long long)length > max_message) {    /* exact: length < 2**32 fits a long long */
            if (pos == 0) {
                PyBuffer_Release(&view);
                return PyErr_Format(PyExc_ValueError, "message length %lu exceeds %S",
                                    (unsigned long)length, max_message_obj);
            }
            break;
        }
        uint64_t stop = pos + HEADER + length;
        if (stop > limit) {
            if (pos == 0 && stop <= end) {
                PyBuffer_Release(&view);
                return Py_BuildValue("(ni)", (Py_ssize_t)stop, 1);
            }
            break;
        }
        pos = stop;
        count++;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nn)", (Py_ssize_t)pos, count);
}

static PyMethodDef methods[] = {
    {"cut_batch_counted", (PyCFunction)(void (*)(void))cut_batch_counted, METH_VARARGS | METH_KEYWORDS,
     "cut_batch_counted(data, max_batch, max_message) -> (bytes, messages): the first batch of "
     "whole pipe messages in data (see workers.jsproto.cut_batch_counted_py)."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "workers._jscut", .m_doc = "lb-bridge's batch cut, compiled.",
    .m_size = 0, .m_methods = methods, .m_slots = slots,
};

PyMODINIT_FUNC PyInit__jscut(void) {
    return PyModuleDef_Init(&module);
}
