"""numba kernels of a sparse layer: forward, fused backward, topology bookkeeping.

Every kernel is a pure function over arrays. Activations and deltas are stored
*transposed*, shape ``(neurons, batch)``, so that the batch is contiguous and each
nonzero weight multiplies (forward), or is dotted with (gradient), a whole
contiguous vector.

A layer ``W`` of shape ``(n_in, n_out)`` is held once, in row order (CSR:
``indptr``, ``indices``, ``data``), plus a column view (``col_indptr``,
``col_rows``, ``col_perm``) whose ``col_perm[k]`` indexes ``data``. The forward
pass walks columns (one output neuron per parallel task, so no two tasks write
the same row), the backward pass walks rows (one input neuron per task).

Speed (see design section 5). The hot loops use explicit SIMD vectors: an LLVM
``<n x float>`` value type (:class:`F32Vec`) and a few intrinsics over it. A
block of up to 128 batch entries of one neuron is accumulated *in registers*
(LLVM splits ``<128 x float>`` into eight 512-bit registers), so each nonzero
costs one broadcast and a run of fused multiply-adds whose other operand comes
straight from the input row: no load/store of the output per nonzero, no alias
checks, no remainder loops. The backward pass keeps the input row ``x`` and the
delta accumulator of the row below in registers for the whole sweep over a
row's nonzeros. Activation, derivative and counter-based dropout are applied to
the register block before its single store. What is left is bound by the
bandwidth from L2 (each nonzero reads a 512-byte row of the batch): rows
aligned to 64 bytes matter (a 16-byte offset costs 20-35%), see
:func:`aligned_empty`.

Activation codes (``act``) used by the kernels:

- ``ACT_PIECEWISE``: ``f(z) = z`` for ``z > 0`` and ``slope * z`` otherwise;
  identity (slope 1), ReLU (0), leaky ReLU and All-ReLU (+-alpha) are all this.
- ``ACT_SIGMOID``: ``f(z) = 1 / (1 + exp(-z))``.
- ``ACT_TANH``: ``f(z) = tanh(z)`` (:func:`_tanh_ir`: in registers, within 4e-7).
"""

import os
import warnings

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

ACT_PIECEWISE = 0
ACT_SIGMOID = 1
ACT_TANH = 2

_KERNEL_OPTIONS = dict(cache=True, nogil=True, fastmath=True, error_model="numpy")

#: numba's own threading layer, the one it falls back to without a TBB or OpenMP runtime.
SLOW_THREADING_LAYER = "workqueue"
_warned_slow_layer = False


@njit(parallel=True, cache=True)
def _start_thread_pool(out):
    for i in prange(out.shape[0]):
        out[i] = i


def threading_layer():
    """numba's threading layer in this process: ``"tbb"``, ``"omp"`` or ``"workqueue"``.

    numba chooses it at the first parallel kernel (TBB, else OpenMP, else its own
    workqueue) and keeps it for the life of the process; this runs a trivial kernel if
    none has run yet. workqueue wakes its threads through the operating system at every
    kernel, even with one thread: on a 2-core VM an empty kernel took 137-143 us against
    OpenMP's 0.7-1.7, and the Fashion-MNIST shape's training step 3320 us on one thread and
    2958 on two, against 1608 and 1048 with OpenMP (``tools/thread_scaling.py`` with and
    without ``NUMBA_THREADING_LAYER=workqueue``).
    """
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run in this process yet
        _start_thread_pool(np.zeros(2, dtype=np.int64))
        return numba.threading_layer()


def _warn_if_slow_threading_layer():
    """Warn, once a process, when numba runs on workqueue, and say what to install."""
    global _warned_slow_layer
    if not _warned_slow_layer and threading_layer() == SLOW_THREADING_LAYER:
        _warned_slow_layer = True
        warnings.warn(
            f"numba runs its threads on its '{SLOW_THREADING_LAYER}' layer (taken when it finds neither an "
            "OpenMP nor a TBB runtime, or when NUMBA_THREADING_LAYER asks for it), which starts every parallel "
            "kernel through the operating system, on one thread as on several: training runs about half as "
            "fast as with OpenMP. Install an OpenMP runtime (Debian/Ubuntu: apt install libgomp1; macOS: "
            "brew install libomp) and start again.", RuntimeWarning, stacklevel=3)


class ThreadCountWarning(RuntimeWarning):
    """More kernel threads were asked for than can run at once; fewer are used (the message says why)."""


def available_cores():
    """Cores this process may run on: its CPU affinity where the system has one, else every core."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def max_threads():
    """The most kernel threads that run at once: one per core this process may use, within numba's pool.

    numba starts a pool of ``NUMBA_NUM_THREADS`` threads when it is imported and can never use more;
    threads beyond the cores would take turns on them, and numba's threads slow down many-fold when
    they compete for a core (design notes, section 5).
    """
    return max(1, min(available_cores(), numba.config.NUMBA_NUM_THREADS))


def capped_threads(n_threads, *, name="threads"):
    """``n_threads`` lowered to :func:`max_threads`, with one :class:`ThreadCountWarning` when it is.

    Parameters
    ----------
    n_threads : int
        Threads asked for, >= 1.
    name : str
        How the caller calls the count, for the warning: ``"threads"`` (shown as ``threads=8``) or a
        flag (``"--threads"``, shown as ``--threads 8``).

    Returns
    -------
    int
        The thread count to use.

    Raises
    ------
    ValueError
        When ``n_threads`` is below 1.
    """
    n_threads = int(n_threads)
    if n_threads < 1:
        raise ValueError(f"{name} must be >= 1, got {n_threads}.")
    limit = max_threads()
    if n_threads > limit:
        warnings.warn(_cap_reason(n_threads, limit, name), ThreadCountWarning, stacklevel=3)
    return min(n_threads, limit)


def _cap_reason(asked, used, name):
    """Why ``asked`` threads became ``used``: which limit binds, and how to lift it without oversubscribing."""
    cores, pool = available_cores(), numba.config.NUMBA_NUM_THREADS
    if pool < cores:
        why = (f"numba was started with NUMBA_NUM_THREADS={pool}, and its pool cannot grow once imported "
               f"(to use up to the {cores} cores this process may run on, set NUMBA_NUM_THREADS={cores} "
               "before starting Python)")
    else:
        why = (f"this process may run on {cores} core(s) (its CPU affinity), and threads beyond the cores "
               "take turns on them, which slows every kernel down many times")
    asked_as = f"{name} {asked}" if name.startswith("-") else f"{name}={asked}"
    return f"{asked_as} asks for more kernel threads than can run at once; using {used}: {why}."


def set_threads(n_threads):
    """Set how many threads the kernels called from this thread use.

    numba keeps the count per thread: a thread started later (an evaluation
    thread, say) begins at ``NUMBA_NUM_THREADS`` and must call this itself.

    Parameters
    ----------
    n_threads : int or None
        Threads, >= 1; more than :func:`max_threads` (the cores this process may
        use, within numba's pool) are capped to it, with a :class:`ThreadCountWarning`.
        ``None`` means :func:`max_threads`. On numba's slow workqueue layer
        (:func:`threading_layer`) the first call warns.

    Returns
    -------
    int
        The thread count now in force.

    Raises
    ------
    ValueError
        When ``n_threads`` is below 1.
    """
    n_threads = max_threads() if n_threads is None else capped_threads(n_threads)
    _warn_if_slow_threading_layer()
    numba.set_num_threads(n_threads)
    return n_threads


def get_threads():
    """Return the number of threads the kernels of this process use."""
    return numba.get_num_threads()


#: Dropout draws have 16 bits: four draws per 64-bit hash keep the mask cheap
#: next to the layer's arithmetic; keep probabilities are exact to 1/65536.
DROPOUT_RESOLUTION = 1 << 16


@njit(inline="always")
def _hash64(seed, counter):
    """splitmix64 of ``seed + counter``: a counter-based generator, so the same
    (seed, counter) gives the same bits whatever the thread count, and no
    generator state is shared (numba's own generator is per thread and not
    numpy's, which would make dropout unrepeatable)."""
    x = np.uint64(seed) + np.uint64(counter) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# -- explicit SIMD vectors ---------------------------------------------------------------------------

class F32Vec(types.Type):
    """A vector of ``n`` float32 lanes held in registers."""

    def __init__(self, n):
        self.n = n
        super().__init__(name=f"f32x{n}")


@register_model(F32Vec)
class _F32VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), fe_type.n))


_F32 = ir.FloatType()
_I64 = ir.IntType(64)


def _vty(n):
    return ir.VectorType(_F32, n)


def _splat(builder, value, n):
    vty = ir.VectorType(value.type, n)
    undef = ir.Constant(vty, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(first, undef, ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n))


def _make_zeros(n):
    @intrinsic
    def zeros(typingctx):
        def codegen(context, builder, sig, args):
            return ir.Constant(_vty(n), [0.0] * n)
        return F32Vec(n)(), codegen
    return zeros


vzeros16 = _make_zeros(16)
vzeros32 = _make_zeros(32)
vzeros64 = _make_zeros(64)
vzeros128 = _make_zeros(128)


@intrinsic
def vsplat(typingctx, proto, x):
    """All lanes equal to the scalar ``x``; ``proto`` only gives the width."""
    if not isinstance(proto, F32Vec):
        return None

    def codegen(context, builder, sig, args):
        value = context.cast(builder, args[1], sig.args[1], types.float32)
        return _splat(builder, value, sig.return_type.n)
    return proto(proto, x), codegen


def _row_pointer(context, builder, aty, ary_val, row, row_ty, col, col_ty):
    ary = context.make_array(aty)(context, builder, ary_val)
    row = context.cast(builder, row, row_ty, types.intp)
    col = context.cast(builder, col, col_ty, types.intp)
    strides = cgutils.unpack_tuple(builder, ary.strides)
    base = builder.ptrtoint(ary.data, _I64)
    offset = builder.add(builder.mul(row, strides[0]), builder.mul(col, ir.Constant(_I64, 4)))
    return builder.add(base, offset)


@intrinsic
def vload(typingctx, arr, row, col, proto):
    """``arr[row, col:col + n]`` of a C-contiguous float32 2-D array (no bounds check; other
    layouts do not type, so a strided view fails loudly instead of reading wrong memory)."""
    if not (isinstance(proto, F32Vec) and isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        addr = _row_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], args[2], sig.args[2])
        ptr = builder.inttoptr(addr, _vty(sig.return_type.n).as_pointer())
        return builder.load(ptr, align=4)
    return proto(arr, row, col, proto), codegen


@intrinsic
def vstore(typingctx, arr, row, col, v):
    """``arr[row, col:col + n] = v`` (no bounds check)."""
    if not (isinstance(v, F32Vec) and isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"):
        return None

    def codegen(context, builder, sig, args):
        addr = _row_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], args[2], sig.args[2])
        ptr = builder.inttoptr(addr, _vty(sig.args[3].n).as_pointer())
        builder.store(args[3], ptr, align=4)
        return context.get_dummy_value()
    return types.none(arr, row, col, v), codegen


def _binary(op):
    @intrinsic
    def fn(typingctx, a, b):
        if not (isinstance(a, F32Vec) and a == b):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1], flags=("fast",))
        return a(a, b), codegen
    return fn


vadd = _binary("fadd")
vmul = _binary("fmul")


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` lane-wise, fused."""
    if not (isinstance(a, F32Vec) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        return _fma(builder, args[0], args[1], args[2])
    return a(a, b, c), codegen


@intrinsic
def sfma(typingctx, a, b, c):
    """Scalar float32 ``a * b + c``, fused: the very operation :func:`vfma` does per lane,
    so a sample's output never depends on which code path its batch position takes."""
    def codegen(context, builder, sig, args):
        vals = [context.cast(builder, v, t, types.float32) for v, t in zip(args, sig.args)]
        fnty = ir.FunctionType(_F32, [_F32] * 3)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.f32")
        return builder.call(fn, vals)
    return types.float32(a, b, c), codegen


def _fma(builder, a, b, c):
    n = a.type.count
    fnty = ir.FunctionType(a.type, [a.type] * 3)
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.v{n}f32")
    return builder.call(fn, [a, b, c])


def _hsum(builder, v, n):
    while n > 1:
        half = n // 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half, n))))
        v = builder.fadd(lo, hi, flags=("fast",))
        n = half
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


def _make_vdot(max_chains):
    @intrinsic
    def vdot(typingctx, a, b):
        """``sum(a * b)`` as float32 (pairwise tree over the lanes)."""
        if not (isinstance(a, F32Vec) and a == b):
            return None

        def codegen(context, builder, sig, args):
            n = a.n
            if n <= 16:
                return _hsum(builder, builder.fmul(args[0], args[1], flags=("fast",)), n)
            idx = lambda c: ir.Constant(ir.VectorType(ir.IntType(32), 16), list(range(16 * c, 16 * c + 16)))
            part = lambda v, c: builder.shuffle_vector(v, v, idx(c))
            chunks = n // 16
            # Independent chains keep the latency of the dot product short, so
            # several nonzeros' dots overlap out of order.
            nchain = min(max_chains, chunks)
            sums = [builder.fmul(part(args[0], c), part(args[1], c), flags=("fast",)) for c in range(nchain)]
            for c in range(nchain, chunks):
                sums[c % nchain] = _fma(builder, part(args[0], c), part(args[1], c), sums[c % nchain])
            while len(sums) > 1:
                sums = [builder.fadd(sums[i], sums[i + 1], flags=("fast",)) if i + 1 < len(sums) else sums[i]
                        for i in range(0, len(sums), 2)]
            return _hsum(builder, sums[0], 16)
        return types.float32(a, b), codegen
    return vdot


#: Two chains measured as fast as one or four (the dot is not the bottleneck).
vdot = _make_vdot(2)


@intrinsic
def vpiecewise(typingctx, z, slope):
    """``z`` where ``z > 0`` else ``slope * z``."""
    if not isinstance(z, F32Vec):
        return None

    def codegen(context, builder, sig, args):
        n = sig.args[0].n
        s = _splat(builder, context.cast(builder, args[1], sig.args[1], types.float32), n)
        pos = builder.fcmp_ordered(">", args[0], ir.Constant(_vty(n), [0.0] * n))
        return builder.select(pos, args[0], builder.fmul(args[0], s, flags=("fast",)))
    return z(z, slope), codegen


@intrinsic
def vpiecewise_deriv(typingctx, z, slope):
    """``1`` where ``z > 0`` else ``slope``."""
    if not isinstance(z, F32Vec):
        return None

    def codegen(context, builder, sig, args):
        n = sig.args[0].n
        s = _splat(builder, context.cast(builder, args[1], sig.args[1], types.float32), n)
        pos = builder.fcmp_ordered(">", args[0], ir.Constant(_vty(n), [0.0] * n))
        return builder.select(pos, ir.Constant(_vty(n), [1.0] * n), s)
    return z(z, slope), codegen


@intrinsic
def vdropout(typingctx, proto, seed, counter0, keep_threshold, keep_scale):
    """Inverted-dropout factors of ``n`` consecutive batch entries starting at a
    multiple of 4: lane ``4q + t`` keeps when 16-bit field ``t`` of
    ``splitmix64(seed + (counter0 + q) * golden)`` is below ``keep_threshold``
    (bit-identical to the scalar ``_hash64`` draws)."""
    if not isinstance(proto, F32Vec):
        return None

    def codegen(context, builder, sig, args):
        n = sig.args[0].n
        m = n // 4
        vi64 = ir.VectorType(_I64, m)
        seed = context.cast(builder, args[1], sig.args[1], types.uint64)
        c0 = context.cast(builder, args[2], sig.args[2], types.uint64)
        thr = context.cast(builder, args[3], sig.args[3], types.int32)
        scale = context.cast(builder, args[4], sig.args[4], types.float32)
        counters = builder.add(_splat(builder, c0, m), ir.Constant(vi64, list(range(m))))
        const = lambda c: ir.Constant(vi64, [c - (1 << 64) if c >= 1 << 63 else c] * m)
        x = builder.add(_splat(builder, seed, m), builder.mul(counters, const(0x9E3779B97F4A7C15)))
        x = builder.mul(builder.xor(x, builder.lshr(x, const(30))), const(0xBF58476D1CE4E5B9))
        x = builder.mul(builder.xor(x, builder.lshr(x, const(27))), const(0x94D049BB133111EB))
        x = builder.xor(x, builder.lshr(x, const(31)))
        draws = builder.zext(builder.bitcast(x, ir.VectorType(ir.IntType(16), n)), ir.VectorType(ir.IntType(32), n))
        keep = builder.icmp_unsigned("<", draws, _splat(builder, thr, n))
        return builder.select(keep, _splat(builder, scale, n), ir.Constant(_vty(n), [0.0] * n))
    return proto(proto, seed, counter0, keep_threshold, keep_scale), codegen


@intrinsic
def uget(typingctx, arr, i):
    """``arr[i]`` of a 1-D contiguous array, no wraparound or bounds check."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.load(builder.gep(ary.data, [idx], inbounds=True))
    return arr.dtype(arr, i), codegen


@intrinsic
def vprefetch_row(typingctx, arr, row, nbytes):
    """Prefetch the first ``nbytes`` (a literal multiple of 64) of ``arr[row]`` into L1."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and isinstance(nbytes, types.IntegerLiteral)):
        return None

    def codegen(context, builder, sig, args):
        addr = _row_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1],
                            ir.Constant(_I64, 0), types.intp)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        for off in range(0, sig.args[2].literal_value, 64):
            ptr = builder.inttoptr(builder.add(addr, ir.Constant(_I64, off)), i8p)
            # read, high locality, data cache
            builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.none(arr, row, nbytes), codegen


# -- forward ---------------------------------------------------------------------------------------


@njit(inline="always")
def _fwd_store(proto, j, c, z, act, slope, a_out, deriv_out, need_deriv, use_dropout, keep_threshold, keep_scale,
               seed, groups):
    """Activation, derivative and dropout of a register block of ``z``, then one store each."""
    if act == ACT_SIGMOID:
        vstore(a_out, j, c, z)  # finished by scalar code over the whole row
        return
    if act == ACT_PIECEWISE:
        out = vpiecewise(z, slope)
        d = vpiecewise_deriv(z, slope) if need_deriv else out
    else:
        out = strict_tanh(z)
        d = strict_tanh_deriv(out) if need_deriv else out
    if use_dropout:
        f = vdropout(proto, seed, j * groups + c // 4, keep_threshold, keep_scale)
        out = vmul(out, f)
        d = vmul(d, f)
    if need_deriv:
        vstore(deriv_out, j, c, d)
    vstore(a_out, j, c, out)


@njit(inline="always")
def _fwd_block1(proto, j, c, start, stop, col_rows, col_perm, data, b0, a_prev, act, slope, a_out, deriv_out,
                need_deriv, use_dropout, keep_threshold, keep_scale, seed, groups):
    """Batch entries ``c:c+n`` of output ``j`` in one register accumulator.

    Every batch entry gets the same sequence of fused multiply-adds (bias, then
    the nonzeros in column order) whatever its block, and the scalar tail does
    the same with :func:`sfma`: a sample's output does not depend on the batch
    size or its position (scikit-learn's invariance checks need this bitwise)."""
    acc = vsplat(proto, b0)
    for k in range(start, stop):
        acc = vfma(vsplat(proto, uget(data, uget(col_perm, k))), vload(a_prev, uget(col_rows, k), c, proto), acc)
    _fwd_store(proto, j, c, acc, act, slope, a_out, deriv_out, need_deriv, use_dropout, keep_threshold,
               keep_scale, seed, groups)


def _float_constant(ty, value):
    """``value`` as a float32 constant of type ``ty`` (a float or a vector of floats)."""
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [value] * ty.count)
    return ir.Constant(ty, value)


def _float_intrinsic(builder, name, *args):
    """Call LLVM's ``llvm.<name>`` overloaded on the type of ``args[0]`` (``f32`` or ``v<n>f32``)."""
    ty = args[0].type
    suffix = f"v{ty.count}f32" if isinstance(ty, ir.VectorType) else "f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * len(args)),
                                        f"llvm.{name}.{suffix}")
    return builder.call(fn, list(args))


#: Coefficients of expm1's Taylor series, 1/9! first (Horner's order).
_EXPM1_COEFFICIENTS = (1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
                       1.0 / 6.0, 0.5, 1.0)


def _tanh_ir(builder, x):
    """tanh of a float32 or of every lane of a float32 vector, within 4e-7 of the exact value.

    A libm call per element (``np.tanh`` in a kernel, about 25 ns here) would cost a 5M-wide
    layer 640M calls a batch; this is multiply-adds and one division, so it runs on whole
    register blocks. With ``a = min(|x|, 9)`` (tanh(9) rounds to 1 in float32) and
    ``z = -2a / 32``, ``m = expm1(z)`` by its Taylor series to ``z**9`` (error below 3e-9 for
    ``|z| <= 0.5625``), doubled five times with ``expm1(2z) = m (m + 2)``, which keeps the
    relative accuracy near 0, gives ``expm1(-2a)``; then
    ``tanh(a) = -expm1(-2a) / (2 + expm1(-2a))`` with the sign of ``x``. Every operation is
    plain float32 with explicit fused multiply-adds: compiled without fast-math
    (:func:`strict_tanh`), a lane of a vector and the scalar tail give the same bits. NaN
    stays NaN.
    """
    ty = x.type
    c = lambda value: _float_constant(ty, value)
    a = _float_intrinsic(builder, "fabs", x)
    a = builder.select(builder.fcmp_ordered(">", a, c(9.0)), c(9.0), a)
    z = builder.fmul(a, c(-2.0 / 32.0))
    m = c(_EXPM1_COEFFICIENTS[0])
    for coefficient in _EXPM1_COEFFICIENTS[1:]:
        m = _float_intrinsic(builder, "fma", m, z, c(coefficient))
    m = builder.fmul(m, z)
    for _ in range(5):
        m = builder.fmul(m, builder.fadd(m, c(2.0)))
    t = builder.fdiv(builder.fneg(m), builder.fadd(m, c(2.0)))
    t = builder.select(builder.fcmp_ordered(">", t, c(1.0)), c(1.0), t)  # the division may round one ulp above 1
    return _float_intrinsic(builder, "copysign", t, x)


def _tanh_deriv_ir(builder, t):
    """``1 - t * t``, the derivative of tanh from its value (plain IEEE, as :func:`_tanh_ir`)."""
    return builder.fsub(_float_constant(t.type, 1.0), builder.fmul(t, t))


def _make_float_intrinsic(build_ir, doc):
    """An intrinsic applying ``build_ir(builder, value)`` to a float32 or to a register block."""
    @intrinsic
    def apply(typingctx, x):
        if isinstance(x, F32Vec):
            result = x
        elif isinstance(x, types.Float):
            result = types.float32
        else:
            return None

        def codegen(context, builder, sig, args):
            value = args[0] if isinstance(x, F32Vec) else context.cast(builder, args[0], sig.args[0], types.float32)
            return build_ir(builder, value)
        return result(x), codegen
    apply.__doc__ = doc
    return apply


_tanh_intrinsic = _make_float_intrinsic(_tanh_ir, "tanh (:func:`_tanh_ir`).")
_tanh_deriv_intrinsic = _make_float_intrinsic(_tanh_deriv_ir, "``1 - t * t``.")


# numba's fast-math pass flags every floating-point instruction of a fastmath function, and LLVM
# then rewrites a register block's tanh and the scalar tail's differently (1 ulp apart in 20% of
# the values). Compiled without fast-math, both are exact IEEE arithmetic and give a sample the same
# bits in any batch position; LLVM still inlines them into the kernels.


@njit(fastmath=False, cache=True, error_model="numpy")
def strict_tanh(x):
    """tanh of a float32 or of a register block (:func:`_tanh_ir`), in exact IEEE arithmetic."""
    return _tanh_intrinsic(x)


@njit(fastmath=False, cache=True, error_model="numpy")
def strict_tanh_deriv(t):
    """``1 - t * t`` of a float32 or of a register block, in exact IEEE arithmetic."""
    return _tanh_deriv_intrinsic(t)


@njit(inline="always")
def _dropout_range(row, deriv_row, need_deriv, neuron, b_from, batch, groups, keep_threshold, keep_scale, seed):
    """Scalar inverted dropout of ``row[b_from:batch]`` (same draws as :func:`vdropout`)."""
    for b in range(b_from, batch):
        bits = _hash64(seed, neuron * groups + b // 4)
        draw = (bits >> np.uint64(16 * (b % 4))) & np.uint64(0xFFFF)
        factor = keep_scale if draw < np.uint64(keep_threshold) else np.float32(0.0)
        row[b] *= factor
        if need_deriv:
            deriv_row[b] *= factor


@njit(parallel=True, **_KERNEL_OPTIONS)
def forward_layer(col_indptr, col_rows, col_perm, data, bias, a_prev, act, slope,
                  a_out, deriv_out, need_deriv, keep_threshold, keep_scale, dropout_seed):
    """Sparse forward pass of one layer with its activation and dropout.

    Computes ``z = W^T a_prev + bias`` column by column, then
    ``a_out = f(z) * mask * keep_scale`` and, when asked,
    ``deriv_out = f'(z) * mask * keep_scale`` (what the backward pass needs;
    storing it instead of ``z`` keeps the sign of ``z`` that All-ReLU's
    derivative depends on).

    The batch is cut into register blocks of 128, then 64, 32 and 16 entries;
    fewer than 16 left over go through scalar code. Any batch size works; the
    arrays must be C-contiguous (rows 64-byte aligned for full speed).

    Parameters
    ----------
    col_indptr : (n_out + 1,) int64
    col_rows : (nnz,) int32
        Input neuron of each nonzero, in column order.
    col_perm : (nnz,) int32 or int64
        Position in ``data`` of each nonzero, in column order.
    data : (nnz,) float32
        Weights in row order.
    bias : (n_out,) float32
    a_prev : (n_in, batch) float32
        Activations of the layer below, transposed.
    act : int
        Activation code (``ACT_*``).
    slope : float
        Negative-side slope for ``ACT_PIECEWISE``.
    a_out : (n_out, batch) float32
        Output, written.
    deriv_out : (n_out, batch) float32
        Written when ``need_deriv``.
    need_deriv : bool
    keep_threshold : int
        Dropout keeps a unit when a 16-bit draw is below this;
        ``DROPOUT_RESOLUTION`` keeps all (no dropout).
    keep_scale : float
        ``1 / keep_probability`` (inverted dropout), 1 without dropout.
    dropout_seed : int
        Seed of this layer and step.
    """
    n_out = bias.shape[0]
    batch = a_prev.shape[1]
    use_dropout = keep_threshold < DROPOUT_RESOLUTION
    groups = (batch + 3) // 4
    scale32 = np.float32(keep_scale)
    slope32 = np.float32(slope)
    p128 = vzeros128()
    p64 = vzeros64()
    p32 = vzeros32()
    p16 = vzeros16()
    if batch == 128 and act != ACT_SIGMOID:
        # The training batch: one register block per neuron and nothing else in
        # the loop (measured 10% faster than the general blocking below).
        for j in prange(n_out):
            _fwd_block1(p128, j, 0, col_indptr[j], col_indptr[j + 1], col_rows, col_perm, data, bias[j], a_prev,
                        act, slope32, a_out, deriv_out, need_deriv, use_dropout, keep_threshold, scale32,
                        dropout_seed, groups)
        return
    for j in prange(n_out):
        start = col_indptr[j]
        stop = col_indptr[j + 1]
        b0 = bias[j]
        c = 0
        while c + 128 <= batch:
            _fwd_block1(p128, j, c, start, stop, col_rows, col_perm, data, b0, a_prev, act, slope32, a_out,
                        deriv_out, need_deriv, use_dropout, keep_threshold, scale32, dropout_seed, groups)
            c += 128
        if c + 64 <= batch:
            _fwd_block1(p64, j, c, start, stop, col_rows, col_perm, data, b0, a_prev, act, slope32, a_out,
                        deriv_out, need_deriv, use_dropout, keep_threshold, scale32, dropout_seed, groups)
            c += 64
        if c + 32 <= batch:
            _fwd_block1(p32, j, c, start, stop, col_rows, col_perm, data, b0, a_prev, act, slope32, a_out,
                        deriv_out, need_deriv, use_dropout, keep_threshold, scale32, dropout_seed, groups)
            c += 32
        if c + 16 <= batch:
            _fwd_block1(p16, j, c, start, stop, col_rows, col_perm, data, b0, a_prev, act, slope32, a_out,
                        deriv_out, need_deriv, use_dropout, keep_threshold, scale32, dropout_seed, groups)
            c += 16
        out = a_out[j]
        if c < batch:
            # Scalar tail of the batch (fewer than 16 entries).
            for b in range(c, batch):
                out[b] = b0
            for k in range(start, stop):
                w = data[col_perm[k]]
                r = a_prev[col_rows[k]]
                for b in range(c, batch):
                    out[b] = sfma(w, r[b], out[b])
            if act == ACT_PIECEWISE:
                d = deriv_out[j] if need_deriv else out
                for b in range(c, batch):
                    zb = out[b]
                    if zb > 0:
                        if need_deriv:
                            d[b] = 1.0
                    else:
                        out[b] = slope32 * zb
                        if need_deriv:
                            d[b] = slope32
                if use_dropout:
                    _dropout_range(out, d, need_deriv, j, c, batch, groups, keep_threshold, scale32, dropout_seed)
            elif act == ACT_TANH:
                d = deriv_out[j] if need_deriv else out
                for b in range(c, batch):
                    t = strict_tanh(out[b])
                    out[b] = t
                    if need_deriv:
                        d[b] = strict_tanh_deriv(t)
                if use_dropout:
                    _dropout_range(out, d, need_deriv, j, c, batch, groups, keep_threshold, scale32, dropout_seed)
        if act == ACT_SIGMOID:
            # The register blocks stored z: sigmoid is finished over the whole row here.
            for b in range(batch):
                out[b] = 1.0 / (1.0 + np.exp(-out[b]))
            if need_deriv:
                d = deriv_out[j]
                for b in range(batch):
                    d[b] = out[b] * (1.0 - out[b])
            if use_dropout:
                _dropout_range(out, deriv_out[j] if need_deriv else out, need_deriv, j, 0, batch, groups,
                               keep_threshold, scale32, dropout_seed)


# -- backward --------------------------------------------------------------------------------------

MODE_UPDATE = 0
MODE_GRADIENT = 1
#: Add the gradient to ``grad_out`` (micro-batches of one batch accumulate).
MODE_ACCUMULATE = 2

#: The backward pass prefetches the delta row this many nonzeros ahead.
_PREFETCH_AHEAD = 2


@njit(inline="always")
def _finish(k, g, w, data, velocity, grad_out, mode, lr, momentum, weight_decay):
    """Momentum SGD on one weight, or hand its gradient out (see backward_layer)."""
    if mode == MODE_UPDATE:
        v = momentum * velocity[k] - lr * (g + weight_decay * w)
        velocity[k] = v
        data[k] = w + v
    elif mode == MODE_ACCUMULATE:
        grad_out[k] += g
    else:
        grad_out[k] = g


@njit(inline="always")
def _bwd_row(proto, nbytes, i, start, stop, indices, data, velocity, a_prev, delta, deriv_prev, delta_prev,
             need_delta_prev, mode, grad_out, lr, momentum, weight_decay):
    """Row ``i`` with the whole batch in registers: ``x``, the accumulator of the
    delta below, and one delta row at a time (the row two nonzeros ahead is
    prefetched: measured 10% faster)."""
    x = vload(a_prev, i, 0, proto)
    if need_delta_prev:
        acc = vsplat(proto, 0.0)
        for k in range(start, stop):
            if k + _PREFETCH_AHEAD < stop:
                vprefetch_row(delta, uget(indices, k + _PREFETCH_AHEAD), nbytes)
            d = vload(delta, uget(indices, k), 0, proto)
            w = uget(data, k)
            acc = vfma(vsplat(proto, w), d, acc)
            _finish(k, vdot(x, d), w, data, velocity, grad_out, mode, lr, momentum, weight_decay)
        # deriv_prev may be the very buffer delta_prev: read before the store.
        vstore(delta_prev, i, 0, vmul(acc, vload(deriv_prev, i, 0, proto)))
    else:
        for k in range(start, stop):
            if k + _PREFETCH_AHEAD < stop:
                vprefetch_row(delta, uget(indices, k + _PREFETCH_AHEAD), nbytes)
            d = vload(delta, uget(indices, k), 0, proto)
            _finish(k, vdot(x, d), uget(data, k), data, velocity, grad_out, mode, lr, momentum, weight_decay)


@njit(parallel=True, **_KERNEL_OPTIONS)
def backward_layer(indptr, indices, data, velocity, a_prev, delta, deriv_prev, delta_prev,
                   need_delta_prev, mode, grad_out, lr, momentum, weight_decay,
                   bias=None, bias_velocity=None, bias_grad_out=None):
    """Fused backward pass of one layer, one input neuron per parallel task.

    For each input neuron ``i`` one sweep over its nonzeros ``k`` (to ``j``):

    - sampled gradient ``g_k = sum_b a_prev[i, b] * delta[j, b]``;
    - ``delta_prev[i] = (sum_k w_k delta[j]) * deriv_prev[i]`` with the weights
      *before* this step's update, as backpropagation requires;
    - ``MODE_UPDATE``: momentum SGD in place, ``v = mu v - lr (g + wd w)``,
      ``w += v``; ``MODE_GRADIENT``: ``grad_out[k] = g`` (a parallel worker
      pushes gradients instead of updating); ``MODE_ACCUMULATE``:
      ``grad_out[k] += g`` (the micro-batches of one batch).

    Batches of 16, 32, 64 and 128 keep a whole row in registers; other sizes
    take a generic path.

    Parameters
    ----------
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
    data : (nnz,) float32
        Weights in row order, updated in place in ``MODE_UPDATE``.
    velocity : (nnz,) float32
        Momentum buffer aligned with ``data``; untouched in ``MODE_GRADIENT``.
    a_prev : (n_in, batch) float32
        Input activations of the layer (after dropout), transposed.
    delta : (n_out, batch) float32
        dLoss/dz of this layer's output.
    deriv_prev : (n_in, batch) float32
        ``f'(z_prev)`` times the dropout mask of the layer below.
    delta_prev : (n_in, batch) float32
        Written when ``need_delta_prev``: dLoss/dz of the layer below. May be
        the same buffer as ``deriv_prev``.
    need_delta_prev : bool
        False for the first layer (nothing below the input).
    mode : int
        ``MODE_UPDATE``, ``MODE_GRADIENT`` or ``MODE_ACCUMULATE``.
    grad_out : (nnz,) float32
        Written in ``MODE_GRADIENT``, added to in ``MODE_ACCUMULATE``.
    lr, momentum, weight_decay : float
    bias, bias_velocity : (n_out,) float32, optional
        When given, the bias step is fused too: its gradient is
        ``delta.sum(axis=1)``; ``MODE_UPDATE`` applies
        ``bv = mu bv - lr g; bias += bv`` (float32, as the model did in numpy),
        ``MODE_GRADIENT`` writes the gradient to ``bias_grad_out``.
    bias_grad_out : (n_out,) float32, optional
        Required with ``bias`` in ``MODE_GRADIENT``.
    """
    n_in = indptr.shape[0] - 1
    batch = a_prev.shape[1]
    # float32 update arithmetic (float64 scalars cost ~14% of the pass in conversions)
    lr = np.float32(lr)
    momentum = np.float32(momentum)
    weight_decay = np.float32(weight_decay)
    if bias is not None:
        _bias_step(delta, bias, bias_velocity, bias_grad_out, mode, lr, momentum)
    if batch == 128:
        p128 = vzeros128()
        for i in prange(n_in):
            _bwd_row(p128, 512, i, indptr[i], indptr[i + 1], indices, data, velocity, a_prev, delta, deriv_prev,
                     delta_prev, need_delta_prev, mode, grad_out, lr, momentum, weight_decay)
    elif batch == 64:
        p64 = vzeros64()
        for i in prange(n_in):
            _bwd_row(p64, 256, i, indptr[i], indptr[i + 1], indices, data, velocity, a_prev, delta, deriv_prev,
                     delta_prev, need_delta_prev, mode, grad_out, lr, momentum, weight_decay)
    elif batch == 32:
        p32 = vzeros32()
        for i in prange(n_in):
            _bwd_row(p32, 128, i, indptr[i], indptr[i + 1], indices, data, velocity, a_prev, delta, deriv_prev,
                     delta_prev, need_delta_prev, mode, grad_out, lr, momentum, weight_decay)
    elif batch == 16:
        p16 = vzeros16()
        for i in prange(n_in):
            _bwd_row(p16, 64, i, indptr[i], indptr[i + 1], indices, data, velocity, a_prev, delta, deriv_prev,
                     delta_prev, need_delta_prev, mode, grad_out, lr, momentum, weight_decay)
    else:
        for i in prange(n_in):
            x = a_prev[i]
            start = indptr[i]
            stop = indptr[i + 1]
            # The delta of the row below accumulates in place: its buffer may be
            # the one holding deriv_prev, which is applied once the sum is done.
            acc = delta_prev[i] if need_delta_prev else x
            dv = deriv_prev[i] if need_delta_prev else x
            scale = np.empty(batch, dtype=np.float32) if need_delta_prev else x
            if need_delta_prev:
                for b in range(batch):
                    scale[b] = dv[b]
                    acc[b] = 0.0
            for k in range(start, stop):
                d0 = delta[indices[k]]
                w0 = data[k]
                s0 = np.float32(0.0)
                for b in range(batch):
                    s0 += x[b] * d0[b]
                if need_delta_prev:
                    for b in range(batch):
                        acc[b] += w0 * d0[b]
                _finish(k, s0, w0, data, velocity, grad_out, mode, lr, momentum, weight_decay)
            if need_delta_prev:
                for b in range(batch):
                    acc[b] *= scale[b]


@njit(inline="always")
def _bias_step(delta, bias, bias_velocity, bias_grad_out, mode, lr, momentum):
    n_out = delta.shape[0]
    batch = delta.shape[1]
    for j in prange(n_out):
        row = delta[j]
        g = np.float32(0.0)
        for b in range(batch):
            g += row[b]
        if mode == MODE_UPDATE:
            v = bias_velocity[j] * momentum - lr * g
            bias_velocity[j] = v
            bias[j] += v
        elif mode == MODE_ACCUMULATE:
            bias_grad_out[j] += g
        else:
            bias_grad_out[j] = g


# -- batches -----------------------------------------------------------------------------------------


def aligned_empty(shape, dtype=np.float32, align=64):
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary.

    The kernels read whole 512-bit rows of ``(neurons, batch)`` buffers; numpy's
    large allocations start 16 bytes past a page, which splits every such load
    across two cache lines (measured 20-35% slower). With a batch whose row
    (``batch * 4`` bytes) is a multiple of 64 every row is then aligned.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in np.atleast_1d(shape)) if not isinstance(shape, int) else (int(shape),)
    count = int(np.prod(shape)) if shape else 1
    raw = np.empty(count * dtype.itemsize + align, dtype=np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)


# -- the loss at the output ------------------------------------------------------------------------------


@njit(**_KERNEL_OPTIONS)
def softmax_cross_entropy_delta(z, target_index, delta_out):
    """Softmax cross-entropy of a batch, its delta and its correct count, in one pass.

    Parameters
    ----------
    z : (n_classes, batch) float32
        Logits.
    target_index : (batch,) int
    delta_out : (n_classes, batch) float32
        Written: ``(softmax(z) - onehot) / batch``.

    Returns
    -------
    loss : float
        Mean over the batch of ``-log(max(p_target, 1e-30))``.
    n_correct : int
        Samples whose first largest logit is the target.
    """
    n_classes = z.shape[0]
    batch = z.shape[1]
    inv_batch = np.float32(1.0 / batch)
    total = 0.0
    n_correct = 0
    for b in range(batch):
        best = z[0, b]
        arg = 0
        for c in range(1, n_classes):
            if z[c, b] > best:
                best = z[c, b]
                arg = c
        t = target_index[b]
        if arg == t:
            n_correct += 1
        s = np.float32(0.0)
        for c in range(n_classes):
            e = np.exp(z[c, b] - best)
            delta_out[c, b] = e
            s += e
        inv = np.float32(1.0) / s
        for c in range(n_classes):
            delta_out[c, b] *= inv
        total += np.log(max(np.float64(delta_out[t, b]), 1e-30))
        delta_out[t, b] -= np.float32(1.0)
        for c in range(n_classes):
            delta_out[c, b] *= inv_batch
    return -total / batch, n_correct


@njit(parallel=True, **_KERNEL_OPTIONS)
def gather_rows_transposed(X, rows, out):
    """``out[f, b] = X[rows[b], f]``: a batch's rows in the kernels' ``(features, batch)`` layout.

    16 samples at a time (one thread task) are copied 16 features by 16, so that both
    the 16 rows read and the 16 output rows written stay in L1. For wide inputs (tens
    of thousands of features) numpy's take-then-transpose moves every value through a
    cache-hostile strided copy: on 65536 x 128 batches (``tools/scale.py --rows wide``,
    its gather column) this takes 23.6 ms on one thread and 13.5 ms on two, against
    numpy's 52 and 50 ms. On narrow inputs it wins only with more than one thread
    (numpy's copy is serial): 784 x 128 batches of a 60000-row X within training, 71-76 us
    on two threads against numpy's 100 (``tools/thread_scaling.py``, gather column); on
    one thread it took 110-140 us against numpy's 95 on an AMD host, so one thread keeps
    numpy there (:func:`gather_transposed`).

    Parameters
    ----------
    X : (n_samples, n_features) float32, C-contiguous
    rows : (batch,) int64
    out : (n_features, batch) float32, C-contiguous
    """
    n_features = X.shape[1]
    batch = rows.shape[0]
    for chunk in prange((batch + 15) // 16):
        first = chunk * 16
        last = min(first + 16, batch)
        for f0 in range(0, n_features, 16):
            f1 = min(f0 + 16, n_features)
            for b in range(first, last):
                row = rows[b]
                for f in range(f0, f1):
                    out[f, b] = X[row, f]


#: From this many features on, batches are gathered by :func:`gather_rows_transposed` even on
#: one thread (numpy's take + transpose can be faster below: 95 against 110-140 us on 784
#: features on an AMD host).
WIDE_INPUT = 4096


def gather_transposed(X, rows, out=None):
    """Rows of ``X`` as a ``(n_features, len(rows))`` C-contiguous float32 block (the kernels' layout).

    ``rows`` is an index array, or a slice (inference walks the rows in order: no copy
    before the transpose on numpy's path). With more than one kernel thread, or inputs of at
    least ``WIDE_INPUT`` features, the copy is :func:`gather_rows_transposed`; else numpy's.
    """
    use_kernel = X.shape[1] >= WIDE_INPUT or numba.get_num_threads() > 1
    if use_kernel and X.dtype == np.float32 and X.flags.c_contiguous:
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(X.shape[0]))
        if out is None or out.shape != (X.shape[1], rows.shape[0]):
            out = aligned_empty((X.shape[1], rows.shape[0]))
        gather_rows_transposed(X, np.asarray(rows, dtype=np.int64), out)
        return out
    block = X[rows] if isinstance(rows, slice) else np.take(X, rows, axis=0)
    if out is None or out.shape != (X.shape[1], block.shape[0]):
        return np.ascontiguousarray(block.T, dtype=np.float32)
    out[...] = block.T
    return out


def column_view(indptr, indices, n_out):
    """Counting-sort the row-ordered nonzeros by column, O(nnz + n).

    Parameters
    ----------
    indptr : (n_in + 1,) int64
    indices : (nnz,) int32
    n_out : int

    Returns
    -------
    col_indptr : (n_out + 1,) int64
    col_rows : (nnz,) int32
        Row of each nonzero in column order (rows ascending within a column).
    col_perm : (nnz,) int32, or int64 from 2**31 nonzeros on
        Index into the row-ordered arrays of each nonzero in column order. int32 saves
        4 bytes a weight: 0.32 GiB of the 10M-neuron network's 85M weights (peak 5.80 ->
        5.48 GiB in ``tools/scale.py --rows 10M --recipe width-aware``, and its SET step
        10.2 -> 8.7 s); the training speed does not change.
    """
    nnz = indices.shape[0]
    col_indptr = np.zeros(n_out + 1, dtype=np.int64)
    col_rows = np.empty(nnz, dtype=np.int32)
    col_perm = np.empty(nnz, dtype=np.int32 if nnz < 2**31 else np.int64)
    _fill_column_view(indptr, indices, col_indptr, col_rows, col_perm)
    return col_indptr, col_rows, col_perm


@njit(**_KERNEL_OPTIONS)
def _fill_column_view(indptr, indices, col_indptr, col_rows, col_perm):
    """:func:`column_view` into arrays given (``col_indptr`` zeroed)."""
    nnz = indices.shape[0]
    n_in = indptr.shape[0] - 1
    n_out = col_indptr.shape[0] - 1
    for k in range(nnz):
        col_indptr[indices[k] + 1] += 1
    for j in range(n_out):
        col_indptr[j + 1] += col_indptr[j]
    fill = col_indptr[:-1].copy()
    for i in range(n_in):
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            p = fill[j]
            col_rows[p] = i
            col_perm[p] = k
            fill[j] = p + 1


@njit(**_KERNEL_OPTIONS)
def merge_sorted_keys(old_keys, new_keys):
    """Merge two sorted, disjoint int64 key arrays in O(n).

    Parameters
    ----------
    old_keys : (n_old,) int64, sorted
    new_keys : (n_new,) int64, sorted

    Returns
    -------
    keys : (n_old + n_new,) int64, sorted
    source : (n_old + n_new,) int64
        ``source[p] = i`` when ``keys[p]`` is ``old_keys[i]``, and
        ``-(i + 1)`` when it is ``new_keys[i]``.
    """
    n_old = old_keys.shape[0]
    n_new = new_keys.shape[0]
    keys = np.empty(n_old + n_new, dtype=np.int64)
    source = np.empty(n_old + n_new, dtype=np.int64)
    i = 0
    j = 0
    p = 0
    while i < n_old and j < n_new:
        if old_keys[i] < new_keys[j]:
            keys[p] = old_keys[i]
            source[p] = i
            i += 1
        else:
            keys[p] = new_keys[j]
            source[p] = -(j + 1)
            j += 1
        p += 1
    while i < n_old:
        keys[p] = old_keys[i]
        source[p] = i
        i += 1
        p += 1
    while j < n_new:
        keys[p] = new_keys[j]
        source[p] = -(j + 1)
        j += 1
        p += 1
    return keys, source
