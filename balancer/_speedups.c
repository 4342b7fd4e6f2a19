/* lb's optional native data path: whole websocket data frames in the receive buffer ->
 * per-pipe framed batches ([u32 LE len][trade bytes]) plus per-message sizes.
 *
 * It accepts only what the pure-Python fast path accepts (FIN text/binary frames, unmasked,
 * no RSV bits, within max_message, with Polygon's exact compact layout and plain symbols) and
 * stops at the first frame it does not take: that frame and everything after it go to the
 * Python decoder and router, which stay the authority for every other rule. A message is
 * validated whole before anything of it is emitted. All state lives in the Engine object
 * (one per connection / balancer); there is no mutable global state. Every read is checked
 * against the buffer's length. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static const char HEAD[] = "{\"ev\":\"T\",\"sym\":\"";
#define HEAD_LEN 17
#define MAX_SYMBOL 32

/* One pipe's share of a read: its size first, then where the copy writes. */
typedef struct {
    size_t bytes, count;
    uint32_t widest;
    PyObject *data, *lens;
    unsigned char *w, *l;
} PipeBuf;

/* A routed trade of the read: offset in the receive buffer, length, pipe. */
typedef struct {
    size_t start;
    uint32_t len, pipe;
} Rec;

typedef struct {
    size_t start, len;
    uint32_t pipe;
} Obj;

typedef struct {
    PyObject_HEAD
    uint32_t npipes;
    PipeBuf *pipes;
    Obj *objs;
    size_t ocap;
    Rec *recs; /* every trade of the current read, in order: copied once, at the end */
    size_t nrecs, rcap;
} Engine;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need) {
        if (n > SIZE_MAX / 2 / elem) return -1;
        n *= 2;
    }
    void *q = PyMem_Realloc(*p, n * elem);
    if (!q) return -1;
    *p = q;
    *cap = n;
    return 0;
}

static uint32_t route(const unsigned char *s, size_t n, uint32_t npipes) {
    uint64_t h = 0xCBF29CE484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001B3ULL;
    }
    return (uint32_t)((h >> 32) % npipes);
}

/* Occurrences of byte c in p[0..n): memchr jumps (SIMD in glibc) from one to the next, far
 * cheaper than a byte loop when c is rare (one '{' per ~110-byte trade). */
static size_t count_byte(const unsigned char *p, size_t n, unsigned char c) {
    size_t count = 0;
    const unsigned char *q = p, *end = p + n;
    while (q < end && (q = memchr(q, c, (size_t)(end - q))) != NULL) {
        count++;
        q++;
    }
    return count;
}

/* memmem(p + from, n - from, "},{\"e", 5), found by memchr on '}' (rare: one per trade) and a
 * check of the 4 bytes after it; glibc's memmem costs more per call than the whole scan. */
static const unsigned char *find_split(const unsigned char *p, size_t from, size_t n) {
    const unsigned char *q = p + from, *end = p + n;
    while (q < end && (q = memchr(q, '}', (size_t)(end - q))) != NULL) {
        if ((size_t)(end - q) < 5) return NULL;
        if (q[1] == ',' && q[2] == '{' && q[3] == '"' && q[4] == 'e') return q;
        q++;
    }
    return NULL;
}

/* Validate one payload; fill e->objs. Returns the object count, 0 to hand back, -1 on no memory. */
static Py_ssize_t split_message(Engine *e, const unsigned char *p, size_t n) {
    if (n < HEAD_LEN + 3 || p[0] != '[' || memcmp(p + 1, HEAD, HEAD_LEN) != 0 || p[n - 2] != '}' ||
        p[n - 1] != ']')
        return 0;
    size_t braces = count_byte(p, n, '{');
    size_t count = 0;
    size_t obj = 1; /* offset of the current object's '{' */
    const size_t last_close = n - 2;
    for (;;) {
        /* the end of this object: the next "},{\"e" at or after obj+1, or the final '}' */
        size_t close = last_close;
        size_t next = 0;
        const unsigned char *hit = NULL;
        if (obj + 1 < n) {
            hit = find_split(p, obj + 1, n);
        }
        if (hit != NULL && (size_t)(hit - p) < last_close) {
            close = (size_t)(hit - p);
            next = close + 2;
        } else if (hit != NULL && (size_t)(hit - p) + 5 <= n) {
            return 0; /* a split point overlapping the final "}]": odd, hand back */
        }
        /* the object is p[obj .. close] inclusive; its body must start with HEAD */
        if (close < obj + HEAD_LEN || memcmp(p + obj, HEAD, HEAD_LEN) != 0) return 0;
        size_t sym = obj + HEAD_LEN;
        size_t q = sym;
        while (q < close && p[q] != '"') {
            unsigned char c = p[q];
            if (c == '\\' || c < 0x20 || c >= 0x80) return 0;
            q++;
        }
        if (q >= close || q - sym > MAX_SYMBOL) return 0;
        if (grow((void **)&e->objs, &e->ocap, count + 1, sizeof(Obj)) < 0) return -1;
        e->objs[count].start = obj;
        e->objs[count].len = close + 1 - obj;
        e->objs[count].pipe = route(p + sym, q - sym, e->npipes);
        count++;
        if (!next) break;
        obj = next;
    }
    if (braces != count) return 0;
    return (Py_ssize_t)count;
}

/* Record a validated message's trades (no copy yet: the read's batches are sized first). */
static int emit(Engine *e, size_t base, size_t count) {
    if (grow((void **)&e->recs, &e->rcap, e->nrecs + count, sizeof(Rec)) < 0) return -1;
    for (size_t i = 0; i < count; i++) {
        Obj *o = &e->objs[i];
        if (o->len > UINT32_MAX - 4) return -1;
        PipeBuf *b = &e->pipes[o->pipe];
        Rec *r = &e->recs[e->nrecs++];
        r->start = base + o->start;
        r->len = (uint32_t)o->len;
        r->pipe = o->pipe;
        b->bytes += 4 + o->len;
        b->count++;
        if (r->len > b->widest) b->widest = r->len;
    }
    return 0;
}

/* scan(buffer, start, end, max_message) -> (pos, frames, trades, [(pipe, data, lens, wide)]) */
static PyObject *Engine_scan(Engine *e, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, end, max_message;
    if (!PyArg_ParseTuple(args, "y*nnn", &view, &start, &end, &max_message)) return NULL;
    PyObject *result = NULL;
    if (start < 0 || end < start || end > view.len || max_message < 0) {
        PyErr_SetString(PyExc_ValueError, "bad buffer range");
        goto done;
    }
    const unsigned char *buf = view.buf;
    size_t pos = (size_t)start, stop = (size_t)end;
    Py_ssize_t frames = 0, trades = 0;
    for (uint32_t i = 0; i < e->npipes; i++) {
        PipeBuf *b = &e->pipes[i];
        b->bytes = b->count = 0;
        b->widest = 0;
        b->data = b->lens = NULL;
    }
    e->nrecs = 0;
    for (;;) {
        size_t avail = stop - pos;
        if (avail < 2) break;
        unsigned char b0 = buf[pos], b1 = buf[pos + 1];
        if ((b0 != 0x81 && b0 != 0x82) || (b1 & 0x80)) break;
        uint64_t length = b1 & 0x7F;
        size_t header = 2;
        if (length == 126) {
            if (avail < 4) break;
            length = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
            header = 4;
        } else if (length == 127) {
            if (avail < 10) break;
            length = 0;
            for (int k = 0; k < 8; k++) length = (length << 8) | buf[pos + 2 + k];
            header = 10;
        }
        if (length > (uint64_t)max_message || length > avail - header) break;
        const unsigned char *payload = buf + pos + header;
        Py_ssize_t count = split_message(e, payload, (size_t)length);
        if (count < 0) {
            PyErr_NoMemory();
            goto done;
        }
        if (count == 0) break;
        if (emit(e, pos + header, (size_t)count) < 0) {
            PyErr_NoMemory();
            goto done;
        }
        frames++;
        trades += count;
        pos += header + (size_t)length;
    }
    /* Each pipe's batch and sizes are allocated at their final size, then filled in one pass
     * over the read's trades: one copy of each trade, from the receive buffer. */
    PyObject *out = PyList_New(0);
    if (!out) goto done;
    for (uint32_t i = 0; i < e->npipes; i++) {
        PipeBuf *b = &e->pipes[i];
        if (!b->count) continue;
        int wide = b->widest > 255;
        b->data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)b->bytes);
        b->lens = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(b->count * (wide ? sizeof(uint32_t) : 1)));
        if (!b->data || !b->lens) goto fail;
        b->w = (unsigned char *)PyBytes_AS_STRING(b->data);
        b->l = (unsigned char *)PyBytes_AS_STRING(b->lens);
    }
    for (size_t k = 0; k < e->nrecs; k++) {
        const Rec *r = &e->recs[k];
        PipeBuf *b = &e->pipes[r->pipe];
        uint32_t len = r->len;
        unsigned char *w = b->w;
        w[0] = (unsigned char)(len & 0xFF);
        w[1] = (unsigned char)((len >> 8) & 0xFF);
        w[2] = (unsigned char)((len >> 16) & 0xFF);
        w[3] = (unsigned char)((len >> 24) & 0xFF);
        memcpy(w + 4, buf + r->start, len);
        b->w = w + 4 + len;
        if (b->widest > 255) {
            memcpy(b->l, &len, sizeof len); /* native order, as array("I").frombytes reads it */
            b->l += sizeof len;
        } else {
            *b->l++ = (unsigned char)len;
        }
    }
    for (uint32_t i = 0; i < e->npipes; i++) {
        PipeBuf *b = &e->pipes[i];
        if (!b->count) continue;
        PyObject *item = Py_BuildValue("(INNi)", i, b->data, b->lens, b->widest > 255);
        b->data = b->lens = NULL; /* the tuple owns them (or freed them on failure) */
        if (!item || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    result = Py_BuildValue("(nnnN)", (Py_ssize_t)pos, frames, trades, out);
    goto done;
fail:
    Py_DECREF(out);
    for (uint32_t i = 0; i < e->npipes; i++) {
        Py_CLEAR(e->pipes[i].data);
        Py_CLEAR(e->pipes[i].lens);
    }
done:
    PyBuffer_Release(&view);
    return result;
}

static int Engine_init(Engine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"npipes", NULL};
    unsigned int npipes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "I", kwlist, &npipes)) return -1;
    if (npipes < 1) {
        PyErr_SetString(PyExc_ValueError, "npipes must be at least 1");
        return -1;
    }
    if (e->pipes) return 0;
    e->pipes = PyMem_Calloc(npipes, sizeof(PipeBuf));
    if (!e->pipes) {
        PyErr_NoMemory();
        return -1;
    }
    e->npipes = npipes;
    return 0;
}

static void Engine_dealloc(Engine *e) {
    if (e->pipes) {
        PyMem_Free(e->pipes);
    }
    PyMem_Free(e->objs);
    PyMem_Free(e->recs);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyMethodDef Engine_methods[] = {
    {"scan", (PyCFunction)Engine_scan, METH_VARARGS,
     "scan(buffer, start, end, max_message) -> (pos, frames, trades, batches)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "balancer._speedups.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_doc = "Per-connection native data path state.",
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "balancer._speedups", "lb's native data path.", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
