// tcc's model of the Metal Shading Language in C++17: what a generated .metal file sees when it is compiled
// by a host compiler instead of Apple's metal compiler. Part of the tcc runtime library (docs/metal.md).
//
// Two users:
//   - runtime/metal/tcc_msl_shim.h (TCC_MSL_CHECK): `clang++ -fsyntax-only -std=c++17 -include
//     runtime/metal/tcc_msl_shim.h -x c++ kernel.metal` type-checks a generated kernel against MSL's types
//     and functions (the SIMD-group functions are declared only);
//   - runtime/simt/tcc_simt_metal.h (TCC_SIMT): the same kernels run on the CPU SIMT emulator (SIMD-groups
//     of 32 lanes are the emulator's warps; the SIMD-group functions are defined there).
// Here: scalar types (half and bfloat with IEEE round-to-nearest-even conversions), the vector types
// (float2/3/4, half2/3/4, int, uint, short, ushort, char, uchar: members .x .y .z .w, element-wise
// operators, MSL's constructors and explicit conversions between element types), the address-space and
// function qualifiers (no-ops: the host compiler has one address space), and the metal:: math functions
// (fast:: and precise:: computed at full precision, as the emulator does for CUDA's intrinsics).
// Not modelled: swizzles other than the single components (.xy, .zw, ...), packed_* types, textures,
// samplers, matrices other than simdgroup_matrix (tcc_simt_metal.h), bool vectors.
#pragma once
#if !defined(__cplusplus) || __cplusplus < 201703L
#error "tcc's MSL model compiles .metal sources as C++17"
#endif
#include <float.h>  // FLT_MAX, as MSL has it
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>  // uint, ushort, ulong: the same types as MSL's

#include <type_traits>

// No <math.h> here: its C++ overloads (::floor(float), ...) would make a kernel's unqualified floor(x) ambiguous
// with metal::floor once `using namespace metal` is in force; the functions below use the compiler's builtins.
#ifndef INFINITY
#define INFINITY __builtin_inff()
#endif
#ifndef NAN
#define NAN __builtin_nanf("")
#endif
#define M_PI_F 3.14159265358979323846264338327950288f

// ---- qualifiers: one address space on the host -----------------------------------------------------------
#define kernel
#define device
#define constant
#define threadgroup
#define thread
#define METAL_FUNC inline

typedef unsigned char uchar;
typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned long ulong;

namespace metal {

// ---- half and bfloat: 16-bit storage, arithmetic in float rounded once per operation -----------------------
namespace detail {
inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
// float -> IEEE binary16, round to nearest even (subnormals, overflow to inf, NaN kept quiet).
inline uint16_t f32_to_f16(float f) {
  const uint32_t x = f2u(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<uint16_t>(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (ax < 0x38800000u) {  // below the smallest normal: a multiple of 2^-24, rounded to nearest even
    const float r = u2f(ax) * 16777216.0f;  // exact scaling into [0, 1024)
    const float n = __builtin_nearbyintf(r);  // the default rounding mode is round-to-nearest-even
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(n));
  }
  const uint32_t mant = ax & 0x7fffffu, exp = (ax >> 23) - 112u;
  uint32_t h = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) return (sign ? -1.0f : 1.0f) * static_cast<float>(m) * 5.9604644775390625e-08f;
  if (e == 31) return u2f(sign | 0x7f800000u | (m << 13));
  return u2f(sign | ((e + 112u) << 23) | (m << 13));
}
inline uint16_t f32_to_bf16(float f) {
  const uint32_t x = f2u(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_to_f32(uint16_t b) { return u2f(static_cast<uint32_t>(b) << 16); }
}  // namespace detail

#define TCC_MSL_HALF_LIKE(N, TO, FROM)                                                                   \
  struct N {                                                                                             \
    uint16_t bits;                                                                                       \
    N() = default;                                                                                       \
    N(float f) : bits(detail::TO(f)) {}                                                                  \
    N(double f) : bits(detail::TO(static_cast<float>(f))) {}                                             \
    N(int i) : bits(detail::TO(static_cast<float>(i))) {}                                                \
    N(uint i) : bits(detail::TO(static_cast<float>(i))) {}                                               \
    N(long i) : bits(detail::TO(static_cast<float>(i))) {}                                               \
    N(ulong i) : bits(detail::TO(static_cast<float>(i))) {}                                              \
    N(short i) : bits(detail::TO(static_cast<float>(i))) {}                                              \
    N(ushort i) : bits(detail::TO(static_cast<float>(i))) {}                                             \
    N(uchar i) : bits(detail::TO(static_cast<float>(i))) {}                                              \
    N(char i) : bits(detail::TO(static_cast<float>(i))) {}                                               \
    N(bool b) : bits(detail::TO(b ? 1.0f : 0.0f)) {}                                                     \
    operator float() const { return detail::FROM(bits); }                                                \
    N operator-() const { N r; r.bits = static_cast<uint16_t>(bits ^ 0x8000u); return r; }               \
    N operator+() const { return *this; }                                                                \
  };                                                                                                     \
  inline N operator+(N a, N b) { return N(float(a) + float(b)); }                                        \
  inline N operator-(N a, N b) { return N(float(a) - float(b)); }                                        \
  inline N operator*(N a, N b) { return N(float(a) * float(b)); }                                        \
  inline N operator/(N a, N b) { return N(float(a) / float(b)); }                                        \
  inline float operator+(N a, float b) { return float(a) + b; }                                          \
  inline float operator-(N a, float b) { return float(a) - b; }                                          \
  inline float operator*(N a, float b) { return float(a) * b; }                                          \
  inline float operator/(N a, float b) { return float(a) / b; }                                          \
  inline float operator+(float a, N b) { return a + float(b); }                                          \
  inline float operator-(float a, N b) { return a - float(b); }                                          \
  inline float operator*(float a, N b) { return a * float(b); }                                          \
  inline float operator/(float a, N b) { return a / float(b); }                                          \
  inline N operator+(N a, int b) { return a + N(b); }                                                    \
  inline N operator-(N a, int b) { return a - N(b); }                                                    \
  inline N operator*(N a, int b) { return a * N(b); }                                                    \
  inline N operator/(N a, int b) { return a / N(b); }                                                    \
  inline N& operator+=(N& a, N b) { return a = a + b; }                                                  \
  inline N& operator-=(N& a, N b) { return a = a - b; }                                                  \
  inline N& operator*=(N& a, N b) { return a = a * b; }                                                  \
  inline N& operator/=(N& a, N b) { return a = a / b; }                                                  \
  inline bool operator==(N a, N b) { return float(a) == float(b); }                                      \
  inline bool operator!=(N a, N b) { return float(a) != float(b); }                                      \
  inline bool operator<(N a, N b) { return float(a) < float(b); }                                        \
  inline bool operator>(N a, N b) { return float(a) > float(b); }                                        \
  inline bool operator<=(N a, N b) { return float(a) <= float(b); }                                      \
  inline bool operator>=(N a, N b) { return float(a) >= float(b); }                                      \
  inline bool operator<(N a, float b) { return float(a) < b; }                                           \
  inline bool operator>(N a, float b) { return float(a) > b; }                                           \
  inline bool operator<(float a, N b) { return a < float(b); }                                           \
  inline bool operator>(float a, N b) { return a > float(b); }
TCC_MSL_HALF_LIKE(half, f32_to_f16, f16_to_f32)
TCC_MSL_HALF_LIKE(bfloat, f32_to_bf16, bf16_to_f32)
#undef TCC_MSL_HALF_LIKE

// ---- vector types ------------------------------------------------------------------------------------------
template <class T, int N>
struct vec;
template <class T, int N>
struct vec_base;  // storage with MSL's member names; size and alignment as MSL's (a 3-vector is padded to 4)
template <class T>
struct alignas(2 * sizeof(T)) vec_base<T, 2> { T x, y; };
template <class T>
struct alignas(4 * sizeof(T)) vec_base<T, 3> { T x, y, z; };
template <class T>
struct alignas(4 * sizeof(T)) vec_base<T, 4> { T x, y, z, w; };

template <class T, int N>
struct vec : vec_base<T, N> {
  using element_type = T;
  static constexpr int size = N;
  vec() = default;
  // A scalar broadcast (MSL converts a scalar to any vector of its element type).
  template <class S, class = std::enable_if_t<std::is_arithmetic_v<S> || std::is_same_v<S, half> ||
                                              std::is_same_v<S, bfloat>>>
  vec(S s) { for (int i = 0; i < N; ++i) (*this)[i] = T(s); }
  template <class A, class B, int M = N, class = std::enable_if_t<M == 2>>
  vec(A a, B b) { (*this)[0] = T(a); (*this)[1] = T(b); }
  template <class A, class B, class C, int M = N, class = std::enable_if_t<M == 3>>
  vec(A a, B b, C c) { (*this)[0] = T(a); (*this)[1] = T(b); (*this)[2] = T(c); }
  template <class A, class B, class C, class D, int M = N, class = std::enable_if_t<M == 4>>
  vec(A a, B b, C c, D d) { (*this)[0] = T(a); (*this)[1] = T(b); (*this)[2] = T(c); (*this)[3] = T(d); }
  template <int M = N, class = std::enable_if_t<M == 4>>
  vec(vec<T, 2> a, vec<T, 2> b) { (*this)[0] = a.x; (*this)[1] = a.y; (*this)[2] = b.x; (*this)[3] = b.y; }
  // Explicit conversion between element types: float4(h) for a half4 h.
  template <class U, class = std::enable_if_t<!std::is_same_v<U, T>>>
  explicit vec(const vec<U, N>& o) { for (int i = 0; i < N; ++i) (*this)[i] = T(o[i]); }
  T& operator[](int i) { return (&this->x)[i]; }
  const T& operator[](int i) const { return (&this->x)[i]; }
};

#define TCC_MSL_VEC_OP(op)                                                                               \
  template <class T, int N>                                                                              \
  inline vec<T, N> operator op(const vec<T, N>& a, const vec<T, N>& b) {                                 \
    vec<T, N> r;                                                                                         \
    for (int i = 0; i < N; ++i) r[i] = T(a[i] op b[i]);                                                  \
    return r;                                                                                            \
  }                                                                                                      \
  template <class T, int N, class S, class = std::enable_if_t<std::is_arithmetic_v<S>>>                  \
  inline vec<T, N> operator op(const vec<T, N>& a, S b) { return a op vec<T, N>(b); }                    \
  template <class T, int N, class S, class = std::enable_if_t<std::is_arithmetic_v<S>>>                  \
  inline vec<T, N> operator op(S a, const vec<T, N>& b) { return vec<T, N>(a) op b; }                    \
  template <class T, int N>                                                                              \
  inline vec<T, N> operator op(const vec<T, N>& a, T b) { return a op vec<T, N>(b); }                    \
  template <class T, int N>                                                                              \
  inline vec<T, N>& operator op##=(vec<T, N>& a, const vec<T, N>& b) { return a = a op b; }             \
  template <class T, int N, class S, class = std::enable_if_t<std::is_arithmetic_v<S>>>                  \
  inline vec<T, N>& operator op##=(vec<T, N>& a, S b) { return a = a op vec<T, N>(b); }
TCC_MSL_VEC_OP(+)
TCC_MSL_VEC_OP(-)
TCC_MSL_VEC_OP(*)
TCC_MSL_VEC_OP(/)
#undef TCC_MSL_VEC_OP
#define TCC_MSL_VEC_BITOP(op)                                                                            \
  template <class T, int N, class = std::enable_if_t<std::is_integral_v<T>>>                             \
  inline vec<T, N> operator op(const vec<T, N>& a, const vec<T, N>& b) {                                 \
    vec<T, N> r;                                                                                         \
    for (int i = 0; i < N; ++i) r[i] = T(a[i] op b[i]);                                                  \
    return r;                                                                                            \
  }                                                                                                      \
  template <class T, int N, class S, class = std::enable_if_t<std::is_integral_v<T> && std::is_integral_v<S>>> \
  inline vec<T, N> operator op(const vec<T, N>& a, S b) { return a op vec<T, N>(b); }
TCC_MSL_VEC_BITOP(&)
TCC_MSL_VEC_BITOP(|)
TCC_MSL_VEC_BITOP(^)
TCC_MSL_VEC_BITOP(>>)
TCC_MSL_VEC_BITOP(<<)
#undef TCC_MSL_VEC_BITOP
template <class T, int N>
inline vec<T, N> operator-(const vec<T, N>& a) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = T(-a[i]);
  return r;
}

}  // namespace metal

#define TCC_MSL_VEC_NAMES(T, N) \
  typedef metal::vec<T, 2> N##2; \
  typedef metal::vec<T, 3> N##3; \
  typedef metal::vec<T, 4> N##4;
TCC_MSL_VEC_NAMES(float, float)
TCC_MSL_VEC_NAMES(metal::half, half)
TCC_MSL_VEC_NAMES(metal::bfloat, bfloat)
TCC_MSL_VEC_NAMES(int, int)
TCC_MSL_VEC_NAMES(uint, uint)
TCC_MSL_VEC_NAMES(short, short)
TCC_MSL_VEC_NAMES(ushort, ushort)
TCC_MSL_VEC_NAMES(char, char)
TCC_MSL_VEC_NAMES(uchar, uchar)
TCC_MSL_VEC_NAMES(long, long)
TCC_MSL_VEC_NAMES(ulong, ulong)
#undef TCC_MSL_VEC_NAMES
using metal::bfloat;
using metal::half;

namespace metal {
// ---- constants ---------------------------------------------------------------------------------------------
#ifndef MAXFLOAT
#define MAXFLOAT 3.402823466e+38f
#endif
#define HALF_MAX 65504.0f

// ---- math (metal::, metal::fast::, metal::precise::): full precision here ------------------------------------
#define TCC_MSL_F1(name, expr)                                                                           \
  inline float name(float x) { return expr; }                                                            \
  inline half name(half x) { return half(name(float(x))); }                                              \
  template <class T, int N>                                                                              \
  inline vec<T, N> name(const vec<T, N>& v) {                                                            \
    vec<T, N> r;                                                                                         \
    for (int i = 0; i < N; ++i) r[i] = T(name(float(v[i])));                                             \
    return r;                                                                                            \
  }
#define TCC_MSL_MATH1                                                                                    \
  TCC_MSL_F1(exp, __builtin_expf(x))                                                                             \
  TCC_MSL_F1(exp2, __builtin_exp2f(x))                                                                           \
  TCC_MSL_F1(log, __builtin_logf(x))                                                                             \
  TCC_MSL_F1(log2, __builtin_log2f(x))                                                                           \
  TCC_MSL_F1(sqrt, __builtin_sqrtf(x))                                                                           \
  TCC_MSL_F1(rsqrt, 1.0f / __builtin_sqrtf(x))                                                                   \
  TCC_MSL_F1(tanh, __builtin_tanhf(x))                                                                           \
  TCC_MSL_F1(sin, __builtin_sinf(x))                                                                             \
  TCC_MSL_F1(cos, __builtin_cosf(x))                                                                             \
  TCC_MSL_F1(tan, __builtin_tanf(x))                                                                             \
  TCC_MSL_F1(floor, __builtin_floorf(x))                                                                         \
  TCC_MSL_F1(ceil, __builtin_ceilf(x))                                                                           \
  TCC_MSL_F1(round, __builtin_roundf(x))                                                                         \
  TCC_MSL_F1(rint, __builtin_rintf(x))                                                                           \
  TCC_MSL_F1(trunc, __builtin_truncf(x))                                                                         \
  TCC_MSL_F1(fabs, __builtin_fabsf(x))                                                                           \
  TCC_MSL_F1(fract, x - __builtin_floorf(x))                                                                     \
  TCC_MSL_F1(recip, 1.0f / x)
TCC_MSL_MATH1
inline float divide(float a, float b) { return a / b; }
inline float pow(float a, float b) { return __builtin_powf(a, b); }
inline float powr(float a, float b) { return __builtin_powf(a, b); }
inline float fmod(float a, float b) { return __builtin_fmodf(a, b); }
inline float copysign(float a, float b) { return __builtin_copysignf(a, b); }
inline float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline half fma(half a, half b, half c) { return half(__builtin_fmaf(float(a), float(b), float(c))); }  // one rounding
namespace fast {
TCC_MSL_MATH1
inline float divide(float a, float b) { return a / b; }
inline float pow(float a, float b) { return __builtin_powf(a, b); }
}  // namespace fast
namespace precise {
TCC_MSL_MATH1
inline float divide(float a, float b) { return a / b; }
inline float pow(float a, float b) { return __builtin_powf(a, b); }
}  // namespace precise
#undef TCC_MSL_MATH1
#undef TCC_MSL_F1

inline bool isnan(float x) { return x != x; }
inline bool isinf(float x) { return __builtin_fabsf(x) == INFINITY; }
inline bool isfinite(float x) { return !isnan(x) && !isinf(x); }
inline bool signbit(float x) { return __builtin_signbit(x); }
// fmin/fmax: MSL returns the other operand when one is NaN (as C).
inline float fmin(float a, float b) { return __builtin_fminf(a, b); }
inline float fmax(float a, float b) { return __builtin_fmaxf(a, b); }
// min/max/clamp/abs on scalars and vectors; mixing element types is an error, as in MSL.
template <class T, class = std::enable_if_t<std::is_arithmetic_v<T> || std::is_same_v<T, half>>>
inline T min(T a, T b) { return b < a ? b : a; }
template <class T, class = std::enable_if_t<std::is_arithmetic_v<T> || std::is_same_v<T, half>>>
inline T max(T a, T b) { return a < b ? b : a; }
inline float min(float a, float b) { return __builtin_fminf(a, b); }
inline float max(float a, float b) { return __builtin_fmaxf(a, b); }
template <class T>
inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
inline float abs(float x) { return __builtin_fabsf(x); }
inline half abs(half x) { return half(__builtin_fabsf(float(x))); }
inline int abs(int x) { return x < 0 ? -x : x; }
inline long abs(long x) { return x < 0 ? -x : x; }
inline float saturate(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }
inline float mix(float a, float b, float t) { return a + (b - a) * t; }
inline float sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x); }
template <class T>
inline T select(T a, T b, bool c) { return c ? b : a; }  // MSL: c ? b : a
template <class T, int N>
inline vec<T, N> min(const vec<T, N>& a, const vec<T, N>& b) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = min(a[i], b[i]);
  return r;
}
template <class T, int N>
inline vec<T, N> max(const vec<T, N>& a, const vec<T, N>& b) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = max(a[i], b[i]);
  return r;
}
template <class T, int N>
inline T dot(const vec<T, N>& a, const vec<T, N>& b) {
  float s = 0.0f;
  for (int i = 0; i < N; ++i) s += float(a[i]) * float(b[i]);
  return T(s);
}
// as_type<T>(x): reinterpret the bits (sizes must match, as in MSL).
template <class To, class From>
inline To as_type(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "as_type between types of one size");
  To t;
  memcpy(&t, &f, sizeof t);
  return t;
}
inline uint popcount(uint v) { return static_cast<uint>(__builtin_popcount(v)); }
inline uint clz(uint v) { return v ? static_cast<uint>(__builtin_clz(v)) : 32u; }
inline uint ctz(uint v) { return v ? static_cast<uint>(__builtin_ctz(v)) : 32u; }
inline uint mulhi(uint a, uint b) { return static_cast<uint>((1ull * a * b) >> 32); }

// ---- memory ordering and atomics (the emulator runs one thread at a time: plain read-modify-writes) -----------
enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }
enum memory_order { memory_order_relaxed };
template <class T>
struct tcc_atomic { T v; };
typedef tcc_atomic<int> atomic_int;
typedef tcc_atomic<uint> atomic_uint;
typedef tcc_atomic<float> atomic_float;
template <class T>
inline bool atomic_compare_exchange_weak_explicit(tcc_atomic<T>* obj, T* expected, T desired, memory_order,
                                                  memory_order) {
  if (obj->v == *expected) {
    obj->v = desired;
    return true;
  }
  *expected = obj->v;
  return false;
}
template <class T>
inline T atomic_fetch_add_explicit(tcc_atomic<T>* obj, T v, memory_order) { T old = obj->v; obj->v = old + v; return old; }
template <class T>
inline T atomic_fetch_max_explicit(tcc_atomic<T>* obj, T v, memory_order) { T old = obj->v; obj->v = old < v ? v : old; return old; }
template <class T>
inline T atomic_load_explicit(tcc_atomic<T>* obj, memory_order) { return obj->v; }
template <class T>
inline void atomic_store_explicit(tcc_atomic<T>* obj, T v, memory_order) { obj->v = v; }

}  // namespace metal

#define TCC_MSL_MODEL 1
