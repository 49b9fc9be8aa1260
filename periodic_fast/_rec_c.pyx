# Cython twin of periodic_fast._rec_py (the spec: read its module docstring).
# Same API and semantics; the numbers are C fields and the class is not
# tracked by the cyclic GC (a record references only its Job tuple of bytes
# and ints, so it can never be part of a cycle), so a record is 48 bytes
# (16 object header + 1 pointer + 3 ints + 3 chars, in a 48-byte pymalloc
# block) instead of 96 plus a 32-byte Python int for its id.  Ints assigned out of a
# field's range raise OverflowError (the scheduler never does: ids are dense,
# run counts are small, epochs wrap through repend()).

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

cimport cython

#: ``epoch`` stays below ``2**31`` (it fits a C int).
EPOCH_MASK = 0x7FFFFFFF


@cython.no_gc
cdef class JobRec:
    """One stored job and its scheduling state."""

    # order: ints first, then chars, so the struct packs into 40 bytes
    cdef public object job
    cdef public int id
    cdef public int run
    cdef public int epoch
    cdef public signed char state
    cdef public signed char where
    cdef unsigned char _confirmed

    def __cinit__(self, int jid, object job):
        self.id = jid
        self.job = job

    @property
    def confirmed(self):
        """Some assignment of this epoch was confirmed."""
        return self._confirmed != 0

    @confirmed.setter
    def confirmed(self, value):
        self._confirmed = 1 if value else 0

    @property
    def key(self):
        """The job handle ``str8(func) + str8(name)``, built on each call."""
        job = self.job  # a Job: a tuple subclass (a typed tuple must be exact)
        cdef bytes func = job[0]
        cdef bytes name = job[1]
        cdef Py_ssize_t nf = len(func)
        cdef Py_ssize_t nn = len(name)
        if nf > 255 or nn > 255:
            raise ValueError("func and name must be at most 255 bytes")
        cdef bytes out = PyBytes_FromStringAndSize(NULL, nf + nn + 2)
        cdef char *p = PyBytes_AS_STRING(out)
        p[0] = <char>nf
        memcpy(p + 1, PyBytes_AS_STRING(func), nf)
        p[1 + nf] = <char>nn
        memcpy(p + 2 + nf, PyBytes_AS_STRING(name), nn)
        return out

    def repend(self):
        """A new epoch: no assignment of it yet (the job is pending again)."""
        self.epoch = (self.epoch + 1) & 0x7FFFFFFF
        self.run = 0
        self._confirmed = 0
