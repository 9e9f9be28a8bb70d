"""Explicit SIMD for numba kernels: an LLVM vector type and the few operations the kernels use on it.

The layer kernels (:mod:`wasap.kernels`) accumulate a block of up to 128 batch entries
of one neuron *in registers*: an LLVM ``<n x float>`` value (:class:`F32Vec`; LLVM
splits ``<128 x float>`` into eight 512-bit registers), so that each nonzero weight
costs one broadcast and a run of fused multiply-adds whose other operand comes straight
from an input row, with no load or store of the output per nonzero, no alias checks
and no remainder loops. numba has no such type; this module builds it on numba's
extension API (:func:`numba.extending.intrinsic`, :func:`numba.extending.register_model`)
and llvmlite's IR builder, so that a numba upgrade that changes them is felt here only.

What it offers, each usable inside ``@njit`` code:

- register blocks: :class:`F32Vec`, ``vzeros16`` to ``vzeros128`` (a zero block, whose
  type also tells the other operations the width), :func:`vsplat`, :func:`vload`,
  :func:`vstore`, ``vadd``, ``vmul``, :func:`vfma`, :func:`vdot`;
- activations on a block: :func:`vpiecewise`, :func:`vpiecewise_deriv`, and
  :func:`strict_tanh`, :func:`strict_tanh_deriv` (on a block or a float32 alike);
- scalars that match the blocks bit for bit: :func:`sfma`;
- memory access without checks: :func:`uget`, :func:`vprefetch_row`;
- dropout draws: :func:`splitmix64` (one 64-bit draw, scalar) and :func:`vdropout`
  (a block's factors from the same draws), at :data:`DROPOUT_RESOLUTION`.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model


# -- register blocks ---------------------------------------------------------------------------------

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


#: Two chains: as fast as one or four in ``tools/bench.py`` (the dot is not the bottleneck).
vdot = _make_vdot(2)


# -- activations on a block ------------------------------------------------------------------------------


def _make_piecewise(where_positive, elsewhere, doc):
    """An intrinsic ``f(z, slope)`` on a register block: ``where_positive`` in the lanes where
    ``z > 0``, else ``elsewhere``; each builds its lanes from ``(builder, z, slope_block, n)``."""
    @intrinsic
    def piecewise(typingctx, z, slope):
        if not isinstance(z, F32Vec):
            return None

        def codegen(context, builder, sig, args):
            n = sig.args[0].n
            s = _splat(builder, context.cast(builder, args[1], sig.args[1], types.float32), n)
            pos = builder.fcmp_ordered(">", args[0], ir.Constant(_vty(n), [0.0] * n))
            return builder.select(pos, where_positive(builder, args[0], s, n), elsewhere(builder, args[0], s, n))
        return z(z, slope), codegen
    piecewise.__doc__ = doc
    return piecewise


vpiecewise = _make_piecewise(lambda builder, z, s, n: z,
                             lambda builder, z, s, n: builder.fmul(z, s, flags=("fast",)),
                             "``z`` where ``z > 0`` else ``slope * z``.")
vpiecewise_deriv = _make_piecewise(lambda builder, z, s, n: ir.Constant(_vty(n), [1.0] * n),
                                   lambda builder, z, s, n: s,
                                   "``1`` where ``z > 0`` else ``slope``.")


# -- dropout draws ------------------------------------------------------------------------------------------

#: Dropout draws have 16 bits: four draws per 64-bit hash keep the mask cheap
#: next to the layer's arithmetic; keep probabilities are exact to 1/65536.
DROPOUT_RESOLUTION = 1 << 16

#: splitmix64's increment (the golden ratio) and its two multipliers, shared by the scalar
#: and the vector draws.
_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
_SPLITMIX_MIX1 = 0xBF58476D1CE4E5B9
_SPLITMIX_MIX2 = 0x94D049BB133111EB


@njit(inline="always")
def splitmix64(seed, counter):
    """splitmix64 of ``seed + counter``: a counter-based generator, so the same
    (seed, counter) gives the same bits whatever the thread count, and no
    generator state is shared (numba's own generator is per thread and not
    numpy's, which would make dropout unrepeatable)."""
    x = np.uint64(seed) + np.uint64(counter) * np.uint64(_SPLITMIX_GAMMA)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_SPLITMIX_MIX1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_SPLITMIX_MIX2)
    return x ^ (x >> np.uint64(31))


@intrinsic
def vdropout(typingctx, proto, seed, counter0, keep_threshold, keep_scale):
    """Inverted-dropout factors of ``n`` consecutive batch entries starting at a
    multiple of 4: lane ``4q + t`` keeps when 16-bit field ``t`` of
    ``splitmix64(seed, counter0 + q)`` is below ``keep_threshold``
    (bit-identical to the scalar :func:`splitmix64` draws)."""
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
        x = builder.add(_splat(builder, seed, m), builder.mul(counters, const(_SPLITMIX_GAMMA)))
        x = builder.mul(builder.xor(x, builder.lshr(x, const(30))), const(_SPLITMIX_MIX1))
        x = builder.mul(builder.xor(x, builder.lshr(x, const(27))), const(_SPLITMIX_MIX2))
        x = builder.xor(x, builder.lshr(x, const(31)))
        draws = builder.zext(builder.bitcast(x, ir.VectorType(ir.IntType(16), n)), ir.VectorType(ir.IntType(32), n))
        keep = builder.icmp_unsigned("<", draws, _splat(builder, thr, n))
        return builder.select(keep, _splat(builder, scale, n), ir.Constant(_vty(n), [0.0] * n))
    return proto(proto, seed, counter0, keep_threshold, keep_scale), codegen


# -- memory access without checks ------------------------------------------------------------------------------

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


# -- tanh --------------------------------------------------------------------------------------------------


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

    A libm call per element (``np.tanh`` in a kernel) would cost a 5M-wide layer 640M calls
    a batch of 128; this is multiply-adds and one division, so it runs on whole register
    blocks. With ``a = min(|x|, 9)`` (tanh(9) rounds to 1 in float32) and
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
# then rewrites a register block's tanh and the scalar tail's differently (1 ulp apart in a good
# share of the values). Compiled without fast-math, both are exact IEEE arithmetic and give a sample the same
# bits in any batch position; LLVM still inlines them into the kernels.


@njit(fastmath=False, cache=True, error_model="numpy")
def strict_tanh(x):
    """tanh of a float32 or of a register block (:func:`_tanh_ir`), in exact IEEE arithmetic."""
    return _tanh_intrinsic(x)


@njit(fastmath=False, cache=True, error_model="numpy")
def strict_tanh_deriv(t):
    """``1 - t * t`` of a float32 or of a register block, in exact IEEE arithmetic."""
    return _tanh_deriv_intrinsic(t)
