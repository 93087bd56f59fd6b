#include "tailor/gradual/rounding.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "tailor/quant/block_io.h"
#include "tailor/quant/codec.h"
#include "tailor/quant/scale_search.h"
#include "tailor/util/error.h"
#include "tailor/util/parallel.h"

namespace tailor::gradual {

using quant::load_half;
using quant::nearest_int;
using quant::store_half;

namespace {

// The parameters of one block, unpacked: fp16 scale(s), integer sub-scales and
// signed levels. Every format's value is S * l - M with S = d * ls[j] and
// M = dmin * lm[j] for sub-block j (legacy formats: one sub-block, ls = lm = 1,
// dmin the negated stored min).
struct Unpacked {
  float d = 0.0f, dmin = 0.0f;
  int16_t ls[16] = {}, lm[16] = {};
  int8_t L[256] = {};
};

using UnpackFn = void (*)(const uint8_t* blk, Unpacked& u);
using PackFn = void (*)(const Unpacked& u, uint8_t* blk);

// ---- shared bit layouts (see quant/legacy_codecs.cpp, kquant_codecs.cpp) ----

// 32-element legacy blocks: element j in the low nibble of byte j (j < 16) or
// the high nibble of byte j - 16; 5-bit types keep bit 4 in a 32-bit mask.
void unpack_nibbles32(const uint8_t* qs, const uint8_t* qh, int offset, int8_t* L) {
  uint32_t high = 0;
  if (qh) std::memcpy(&high, qh, 4);
  for (int j = 0; j < 32; ++j) {
    int low = j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4);
    L[j] = static_cast<int8_t>((low | int((high >> j) & 1u) << 4) - offset);
  }
}

void pack_nibbles32(const int8_t* L, int offset, uint8_t* qs, uint8_t* qh) {
  uint32_t high = 0;
  for (int j = 0; j < 32; ++j) high |= uint32_t(((L[j] + offset) >> 4) & 1) << j;
  for (int j = 0; j < 16; ++j)
    qs[j] = static_cast<uint8_t>(((L[j] + offset) & 0xF) | (((L[j + 16] + offset) & 0xF) << 4));
  if (qh) std::memcpy(qh, &high, 4);
}

// Q2_K/Q3_K low 2 bits: byte 32 * (e / 128) + e % 32, shift 2 * ((e % 128) / 32).
inline int get_2bit(const uint8_t* qs, int e) { return (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3; }

void put_2bit(const uint8_t* v, uint8_t* qs) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const uint8_t* e = v + 128 * h + l;
      qs[32 * h + l] = static_cast<uint8_t>(e[0] | (e[32] << 2) | (e[64] << 4) | (e[96] << 6));
    }
}

// Q4_K/Q5_K: 6-bit scales and mins of eight sub-blocks in 12 bytes.
void get_k4_scales(const uint8_t* s, int16_t* ls, int16_t* lm) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      ls[j] = s[j] & 63;
      lm[j] = s[j + 4] & 63;
    } else {
      ls[j] = static_cast<int16_t>((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
      lm[j] = static_cast<int16_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
  }
}

void put_k4_scales(const int16_t* ls, const int16_t* lm, uint8_t* s) {
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>(ls[j] | ((ls[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>(lm[j] | ((lm[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4));
  }
}

// Q4_K/Q5_K low nibbles: byte 32 * (e / 64) + e % 32, high nibble for the
// second half of each 64-element chunk.
inline int get_k4_nibble(const uint8_t* qs, int e) {
  uint8_t b = qs[32 * (e / 64) + e % 32];
  return (e % 64) < 32 ? (b & 0xF) : (b >> 4);
}

void put_k4_nibbles(const int8_t* L, uint8_t* qs) {
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      qs[32 * c + l] = static_cast<uint8_t>((L[64 * c + l] & 0xF) | ((L[64 * c + 32 + l] & 0xF) << 4));
}

// ---- per-format unpack / pack ----------------------------------------------

template <int kOffset, int kMinAt, int kQhAt, int kQsAt>
void unpack_legacy(const uint8_t* b, Unpacked& u) {
  u.d = load_half(b);
  u.dmin = kMinAt >= 0 ? -load_half(b + kMinAt) : 0.0f;
  u.ls[0] = u.lm[0] = 1;
  unpack_nibbles32(b + kQsAt, kQhAt >= 0 ? b + kQhAt : nullptr, kOffset, u.L);
}

template <int kOffset, int kMinAt, int kQhAt, int kQsAt>
void pack_legacy(const Unpacked& u, uint8_t* b) {
  store_half(b, u.d);
  if (kMinAt >= 0) store_half(b + kMinAt, -u.dmin);
  pack_nibbles32(u.L, kOffset, b + kQsAt, kQhAt >= 0 ? b + kQhAt : nullptr);
}

void unpack_q8_0(const uint8_t* b, Unpacked& u) {
  u.d = load_half(b);
  u.ls[0] = u.lm[0] = 1;
  std::memcpy(u.L, b + 2, 32);
}

void pack_q8_0(const Unpacked& u, uint8_t* b) {
  store_half(b, u.d);
  std::memcpy(b + 2, u.L, 32);
}

// Q2_K: scales[16] at 0, qs[64] at 16, d at 80, dmin at 82.
void unpack_q2_k(const uint8_t* b, Unpacked& u) {
  u.d = load_half(b + 80);
  u.dmin = load_half(b + 82);
  for (int j = 0; j < 16; ++j) {
    u.ls[j] = b[j] & 0xF;
    u.lm[j] = b[j] >> 4;
  }
  for (int e = 0; e < 256; ++e) u.L[e] = static_cast<int8_t>(get_2bit(b + 16, e));
}

void pack_q2_k(const Unpacked& u, uint8_t* b) {
  for (int j = 0; j < 16; ++j) b[j] = static_cast<uint8_t>(u.ls[j] | (u.lm[j] << 4));
  uint8_t v[256];
  for (int e = 0; e < 256; ++e) v[e] = static_cast<uint8_t>(u.L[e]);
  put_2bit(v, b + 16);
  store_half(b + 80, u.d);
  store_half(b + 82, u.dmin);
}

// Q3_K: hmask[32] at 0, qs[64] at 32, scales[12] at 96, d at 108. Levels
// 0..7 stored (bit 2 in hmask byte e % 32, bit e / 32), value d * ls * (L - 4).
void unpack_q3_k(const uint8_t* b, Unpacked& u) {
  const uint8_t* s = b + 96;
  for (int j = 0; j < 16; ++j) {
    int low = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
    int high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    u.ls[j] = static_cast<int16_t>((low | high << 4) - 32);
  }
  u.d = load_half(b + 108);
  for (int e = 0; e < 256; ++e) {
    int high = (b[e % 32] >> (e / 32)) & 1;
    u.L[e] = static_cast<int8_t>((get_2bit(b + 32, e) | high << 2) - 4);
  }
}

void pack_q3_k(const Unpacked& u, uint8_t* b) {
  std::memset(b, 0, 32);
  uint8_t low[256];
  for (int e = 0; e < 256; ++e) {
    int v = u.L[e] + 4;
    if (v > 3) b[e % 32] |= static_cast<uint8_t>(1u << (e / 32));
    low[e] = static_cast<uint8_t>(v & 3);
  }
  put_2bit(low, b + 32);
  uint8_t* s = b + 96;
  std::memset(s, 0, 12);
  for (int j = 0; j < 16; ++j) {
    int v = u.ls[j] + 32;
    s[j % 8] |= static_cast<uint8_t>((v & 0xF) << (j < 8 ? 0 : 4));
    s[8 + j % 4] |= static_cast<uint8_t>(((v >> 4) & 3) << (2 * (j / 4)));
  }
  store_half(b + 108, u.d);
}

// Q4_K: d, dmin, scales[12] at 4, qs[128] at 16. Q5_K adds qh[32] at 16
// (bit 4 of element e: byte e % 32, bit e / 32) and moves qs to 48.
template <bool kFive>
void unpack_k4(const uint8_t* b, Unpacked& u) {
  u.d = load_half(b);
  u.dmin = load_half(b + 2);
  get_k4_scales(b + 4, u.ls, u.lm);
  const uint8_t* qs = b + (kFive ? 48 : 16);
  for (int e = 0; e < 256; ++e) {
    int fifth = kFive ? (b[16 + e % 32] >> (e / 32)) & 1 : 0;
    u.L[e] = static_cast<int8_t>(get_k4_nibble(qs, e) | fifth << 4);
  }
}

template <bool kFive>
void pack_k4(const Unpacked& u, uint8_t* b) {
  store_half(b, u.d);
  store_half(b + 2, u.dmin);
  put_k4_scales(u.ls, u.lm, b + 4);
  if (kFive) {
    std::memset(b + 16, 0, 32);
    for (int e = 0; e < 256; ++e) b[16 + e % 32] |= static_cast<uint8_t>(((u.L[e] >> 4) & 1) << (e / 32));
  }
  put_k4_nibbles(u.L, b + (kFive ? 48 : 16));
}

// Q6_K: ql[128] at 0, qh[64] at 128, int8 scales[16] at 192, d at 208.
// Element e = 128h + 32k + l: low nibble in ql[64h + 32(k & 1) + l] (high
// nibble when k >= 2), top bits in qh[32h + l] at shift 2k; value d*ls*(L-32).
void unpack_q6_k(const uint8_t* b, Unpacked& u) {
  for (int j = 0; j < 16; ++j) u.ls[j] = static_cast<int8_t>(b[192 + j]);
  u.d = load_half(b + 208);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    const uint8_t lo = b[64 * h + 32 * (k & 1) + l];
    const int low = k < 2 ? (lo & 0xF) : (lo >> 4);
    const int high = (b[128 + 32 * h + l] >> (2 * k)) & 3;
    u.L[e] = static_cast<int8_t>((low | high << 4) - 32);
  }
}

void pack_q6_k(const Unpacked& u, uint8_t* b) {
  std::memset(b, 0, 192);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    const uint8_t v = static_cast<uint8_t>(u.L[e] + 32);
    b[64 * h + 32 * (k & 1) + l] |= static_cast<uint8_t>((v & 0xF) << (k < 2 ? 0 : 4));
    b[128 + 32 * h + l] |= static_cast<uint8_t>((v >> 4) << (2 * k));
  }
  for (int j = 0; j < 16; ++j) b[192 + j] = static_cast<uint8_t>(static_cast<int8_t>(u.ls[j]));
  store_half(b + 208, u.d);
}

// IQ4_XS: d, scales_h (u16: bits 2j..2j+1 = top bits of sub-scale j) at 2,
// scales_l[4] at 4 (low nibbles, even sub-block low), then 16 bytes per
// sub-block laid out as an IQ4_NL block; value d * (ls - 32) * codebook[L].
void unpack_iq4_xs(const uint8_t* b, Unpacked& u) {
  u.d = load_half(b);
  const int high = b[2] | b[3] << 8;
  for (int j = 0; j < 8; ++j) {
    const int ls = ((b[4 + j / 2] >> (4 * (j % 2))) & 0xF) | ((high >> (2 * j)) & 3) << 4;
    u.ls[j] = static_cast<int16_t>(ls - 32);
    unpack_nibbles32(b + 8 + 16 * j, nullptr, 0, u.L + 32 * j);
  }
}

void pack_iq4_xs(const Unpacked& u, uint8_t* b) {
  store_half(b, u.d);
  int high = 0;
  std::memset(b + 4, 0, 4);
  for (int j = 0; j < 8; ++j) {
    const int ls = u.ls[j] + 32;
    high |= (ls >> 4) << (2 * j);
    b[4 + j / 2] |= static_cast<uint8_t>((ls & 0xF) << (4 * (j % 2)));
    pack_nibbles32(u.L + 32 * j, 0, b + 8 + 16 * j, nullptr);
  }
  b[2] = static_cast<uint8_t>(high & 0xFF);
  b[3] = static_cast<uint8_t>(high >> 8);
}

}  // namespace

// What materialization needs to know about a type.
struct RoundingFormat {
  GgmlType type;
  int block;              // elements per block (legacy) or super-block (K)
  int group;              // elements per sub-block (one scale / min)
  int lo, hi;             // signed level range
  bool affine;            // has a min
  bool kquant;            // integer sub-scales under fp16 super-scales
  int slo, shi, mhi;      // K: sub-scale range, sub-min range [0, mhi]
  const int8_t* codebook; // levels index this table (IQ4); null: the level is the value
  UnpackFn unpack;
  PackFn pack;
  int subs() const { return block / group; }
};

namespace {

using Format = RoundingFormat;

// ggml's kvalues_iq4nl.
constexpr int8_t kIQ4Codebook[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// Q8_0 stops at -127: ggml's SIMD dot products take |q| of int8 values.
constexpr Format kFormats[] = {
    {GgmlType::Q8_0, 32, 32, -127, 127, false, false, 0, 0, 0, nullptr, unpack_q8_0, pack_q8_0},
    {GgmlType::Q4_0, 32, 32, -8, 7, false, false, 0, 0, 0, nullptr, unpack_legacy<8, -1, -1, 2>, pack_legacy<8, -1, -1, 2>},
    {GgmlType::Q4_1, 32, 32, 0, 15, true, false, 0, 0, 0, nullptr, unpack_legacy<0, 2, -1, 4>, pack_legacy<0, 2, -1, 4>},
    {GgmlType::Q5_0, 32, 32, -16, 15, false, false, 0, 0, 0, nullptr, unpack_legacy<16, -1, 2, 6>, pack_legacy<16, -1, 2, 6>},
    {GgmlType::Q5_1, 32, 32, 0, 31, true, false, 0, 0, 0, nullptr, unpack_legacy<0, 2, 4, 8>, pack_legacy<0, 2, 4, 8>},
    {GgmlType::Q2_K, 256, 16, 0, 3, true, true, 0, 15, 15, nullptr, unpack_q2_k, pack_q2_k},
    {GgmlType::Q3_K, 256, 16, -4, 3, false, true, -32, 31, 0, nullptr, unpack_q3_k, pack_q3_k},
    {GgmlType::Q4_K, 256, 32, 0, 15, true, true, 0, 63, 63, nullptr, unpack_k4<false>, pack_k4<false>},
    {GgmlType::Q5_K, 256, 32, 0, 31, true, true, 0, 63, 63, nullptr, unpack_k4<true>, pack_k4<true>},
    {GgmlType::Q6_K, 256, 16, -32, 31, false, true, -128, 127, 0, nullptr, unpack_q6_k, pack_q6_k},
    {GgmlType::IQ4_NL, 32, 32, 0, 15, false, false, 0, 0, 0, kIQ4Codebook, unpack_legacy<0, -1, -1, 2>,
     pack_legacy<0, -1, -1, 2>},
    {GgmlType::IQ4_XS, 256, 32, 0, 15, false, true, -32, 31, 0, kIQ4Codebook, unpack_iq4_xs, pack_iq4_xs},
};

const Format* find_format(GgmlType t) {
  for (const Format& f : kFormats)
    if (f.type == t) return &f;
  return nullptr;
}

// The super-scale for sub-scale targets a[j] (in units of the initial
// super-scale d0): d0 while every target rounds into [lo, hi], else d0 grown
// just enough for the extreme one. Fills the integer sub-scales.
float encode_sub_scales(float d0, const float* a, int n, int lo, int hi, int16_t* out) {
  float grow = 1.0f;
  for (int j = 0; j < n; ++j) {
    if (a[j] > hi + 0.5f) grow = std::max(grow, a[j] / hi);
    if (a[j] < lo - 0.5f) grow = std::max(grow, a[j] / lo);
  }
  if (grow == 1.0f) {
    for (int j = 0; j < n; ++j) out[j] = static_cast<int16_t>(std::clamp(nearest_int(a[j]), lo, hi));
    return d0;
  }
  const float d = fp16_to_fp32(fp32_to_fp16(d0 * grow));
  for (int j = 0; j < n; ++j) {
    const float t = d0 * a[j] / d;
    out[j] = static_cast<int16_t>(std::clamp(nearest_int(std::clamp(t, lo - 1.0f, hi + 1.0f)), lo, hi));
  }
  return d;
}

// Where a value y = (w + min) / scale sits on the level axis: y itself for
// linear formats; for codebook formats its index position, the piecewise-
// linear inverse of the codebook (extended linearly past the ends), so that
// rounding it picks the nearest entry.
inline float position(const Format& f, float y) {
  if (f.codebook == nullptr) return y;
  const int8_t* k = f.codebook;
  int i = 0;
  while (i < 14 && y >= k[i + 1]) ++i;
  return static_cast<float>(i) + (y - k[i]) / static_cast<float>(k[i + 1] - k[i]);
}

// Value units per level step around a position (1 for linear formats).
inline float slope(const Format& f, float pos) {
  if (f.codebook == nullptr) return 1.0f;
  const int i = pos >= 14.0f ? 14 : pos >= 1.0f ? static_cast<int>(pos) : 0;  // NaN: 0
  return static_cast<float>(f.codebook[i + 1] - f.codebook[i]);
}

inline float level_value(const Format& f, int l) {
  return f.codebook ? static_cast<float>(f.codebook[l]) : static_cast<float>(l);
}

// The position that is rounded; materialize, gradients and the constructor's
// pins must compute it alike.
inline float offset_position(const Format& f, float w, float scale, float min, float v, float pin) {
  return position(f, (w + min) / scale) + v + pin;
}

inline int round_level(float u, int lo, int hi) {
  return std::clamp(nearest_int(std::clamp(u, lo - 1.0f, hi + 1.0f)), lo, hi);
}

inline int sign_of(double g) { return (g > 0) - (g < 0); }

}  // namespace

// Lattice types (IQ1/IQ2/IQ3) pick each group of 4 or 8 levels from a
// codebook of grid points, so a per-weight offset cannot move one level: they
// are trained through the quantizer instead (see rounding.h).
bool requantized(GgmlType t) {
  switch (t) {
    case GgmlType::IQ1_S:
    case GgmlType::IQ1_M:
    case GgmlType::IQ2_XXS:
    case GgmlType::IQ2_XS:
    case GgmlType::IQ2_S:
    case GgmlType::IQ3_XXS:
    case GgmlType::IQ3_S:
      return true;
    default:
      return false;
  }
}

constexpr int64_t kUnitGroup = 32;  // weights sharing one offset unit (a lattice sub-block)

bool rounding_trainable(GgmlType t) { return find_format(t) != nullptr || requantized(t); }

TrainableMatrix::TrainableMatrix(GgmlType t, const float* w, int64_t rows, int64_t cols,
                                 const float* importance, RoundingOptions o)
    : type_(t), rows_(rows), cols_(cols), fmt_(find_format(t)), opt_(o) {
  if (fmt_ == nullptr && !requantized(t)) fail("trainable rounding: type {} is not supported", type_name(t));
  const int64_t block = fmt_ ? fmt_->block : type_info(t).block_size;
  if (rows <= 0 || cols <= 0 || cols % block != 0)
    fail("trainable rounding: {} matrix [{}][{}] does not fit {}-element blocks", type_name(t), rows, cols, block);
  if (!(o.scale_range >= 0.0f && o.scale_range < 1.0f))
    fail("trainable rounding: scale_range {} is outside [0, 1)", o.scale_range);
  const int64_t n = rows * cols;
  w_.assign(w, w + n);
  if (importance) importance_.assign(importance, importance + cols);
  blocks_.resize(static_cast<size_t>(rows) * row_size(t, cols));
  quantize_rows(t, w, blocks_.data(), rows, cols, importance, opt_.threads);
  if (fmt_ == nullptr) {
    init_requantized();
    return;
  }

  const int64_t nblocks = n / fmt_->block, nsubs = n / fmt_->group;
  d0_.resize(nblocks);
  dmin0_.resize(nblocks);
  ls0_.resize(nsubs);
  lm0_.resize(nsubs);
  pin_.assign(n, 0.0f);
  scale_.resize(nsubs);
  min_.resize(nsubs);
  level_.resize(n);
  weights_.resize(n);
  params_.offsets.assign(n, 0.0f);
  params_.scale_mult.assign(nsubs, 1.0f);
  if (fmt_->affine) params_.min_mult.assign(nsubs, 1.0f);

  // Read the initial blocks back; pin the levels plain rounding would not give.
  const size_t bpb = type_info(t).bytes_per_block;
  const Format& f = *fmt_;
  parallel_for(
      nblocks,
      [&](int64_t b0, int64_t b1) {
        Unpacked u;
        for (int64_t b = b0; b < b1; ++b) {
          f.unpack(blocks_.data() + b * bpb, u);
          d0_[b] = u.d;
          dmin0_[b] = u.dmin;
          for (int j = 0; j < f.subs(); ++j) {
            const int64_t s = b * f.subs() + j;
            ls0_[s] = u.ls[j];
            lm0_[s] = u.lm[j];
            const float scale = u.d * u.ls[j], min = u.dmin * u.lm[j];
            for (int i = 0; i < f.group; ++i) {
              const int64_t e = b * f.block + j * f.group + i;
              const int l = u.L[j * f.group + i];
              level_[e] = static_cast<int8_t>(l);
              if (scale == 0.0f) continue;
              const float z = offset_position(f, w_[e], scale, min, 0.0f, 0.0f);
              if (round_level(z, f.lo, f.hi) != l) pin_[e] = static_cast<float>(l) - z;
            }
          }
        }
      },
      opt_.threads);
  materialize();
}

void TrainableMatrix::init_requantized() {
  const int64_t n = rows_ * cols_;
  weights_.resize(size_t(n));
  dequantize_rows(type_, blocks_.data(), weights_.data(), rows_, cols_, opt_.threads);
  // An offset of 1 moves a weight by about one level spacing: sqrt(12) times
  // the RMS rounding error of its group (uniform error over one spacing).
  unit_.assign(size_t(n / kUnitGroup), 0.0f);
  for (size_t g = 0; g < unit_.size(); ++g) {
    double sq = 0.0;
    for (size_t e = g * kUnitGroup; e < (g + 1) * kUnitGroup; ++e) {
      const double d = double(weights_[e]) - w_[e];
      sq += d * d;
    }
    const double u = std::sqrt(12.0 * sq / kUnitGroup);
    unit_[g] = std::isfinite(u) && u < 1e30 ? float(u) : 0.0f;
  }
  params_.offsets.assign(size_t(n), 0.0f);
  pending_ = params_.offsets;
}

void TrainableMatrix::materialize() {
  if (fmt_ == nullptr) {
    // Lattice types: quantize the shifted weights w + v * unit afresh.
    std::vector<float> shifted(w_.size());
    for (size_t e = 0; e < w_.size(); ++e) shifted[e] = w_[e] + params_.offsets[e] * unit_[e / kUnitGroup];
    quantize_rows(type_, shifted.data(), blocks_.data(), rows_, cols_,
                  importance_.empty() ? nullptr : importance_.data(), opt_.threads);
    dequantize_rows(type_, blocks_.data(), weights_.data(), rows_, cols_, opt_.threads);
    return;
  }
  const Format& f = *fmt_;
  const int64_t blocks_per_row = cols_ / f.block;
  const size_t bpb = type_info(type_).bytes_per_block;
  const size_t rbytes = row_size(type_, cols_);
  parallel_for(
      rows_,
      [&](int64_t r0, int64_t r1) {
        Unpacked u;
        float a[16];
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t bi = 0; bi < blocks_per_row; ++bi) {
            const int64_t b = r * blocks_per_row + bi;
            const int64_t s0 = b * f.subs();
            const float* sm = params_.scale_mult.data() + s0;
            const float* mm = f.affine ? params_.min_mult.data() + s0 : nullptr;
            if (f.kquant) {
              for (int j = 0; j < f.subs(); ++j) a[j] = ls0_[s0 + j] * sm[j];
              u.d = encode_sub_scales(d0_[b], a, f.subs(), f.slo, f.shi, u.ls);
              if (f.affine) {
                for (int j = 0; j < f.subs(); ++j) a[j] = lm0_[s0 + j] * mm[j];
                u.dmin = encode_sub_scales(dmin0_[b], a, f.subs(), 0, f.mhi, u.lm);
              } else {
                u.dmin = 0.0f;
                std::fill(u.lm, u.lm + f.subs(), int16_t{0});
              }
            } else {
              u.d = fp16_to_fp32(fp32_to_fp16(d0_[b] * sm[0]));
              u.dmin = f.affine ? fp16_to_fp32(fp32_to_fp16(dmin0_[b] * mm[0])) : 0.0f;
              u.ls[0] = u.lm[0] = 1;
            }
            for (int j = 0; j < f.subs(); ++j) {
              const float scale = u.d * u.ls[j], min = u.dmin * u.lm[j];
              scale_[s0 + j] = scale;
              min_[s0 + j] = min;
              const int64_t e0 = b * f.block + j * f.group;
              for (int i = 0; i < f.group; ++i) {
                const int64_t e = e0 + i;
                // A zero scale makes every level decode alike: keep the initial one.
                if (scale != 0.0f)
                  level_[e] = static_cast<int8_t>(round_level(
                      offset_position(f, w_[e], scale, min, params_.offsets[e], pin_[e]), f.lo, f.hi));
                u.L[j * f.group + i] = level_[e];
              }
            }
            f.pack(u, blocks_.data() + b * bpb);
          }
          dequantize_row(type_, blocks_.data() + r * rbytes, weights_.data() + r * cols_, cols_);
        }
      },
      opt_.threads);
}

TrainableMatrix::Params TrainableMatrix::gradients(const float* grad_w) const {
  Params g;
  if (fmt_ == nullptr) {
    // Straight through the quantizer: d W_hat / d v = unit.
    g.offsets.resize(w_.size());
    for (size_t e = 0; e < w_.size(); ++e) g.offsets[e] = grad_w[e] * unit_[e / kUnitGroup];
    return g;
  }
  const Format& f = *fmt_;
  g.offsets.assign(w_.size(), 0.0f);
  g.scale_mult.assign(scale_.size(), 0.0f);
  if (f.affine) g.min_mult.assign(scale_.size(), 0.0f);
  const int64_t subs_per_row = cols_ / f.group;
  parallel_for(
      rows_,
      [&](int64_t r0, int64_t r1) {
        for (int64_t s = r0 * subs_per_row; s < r1 * subs_per_row; ++s) {
          const float scale = scale_[s], min = min_[s];
          double gs = 0.0, gm = 0.0;
          for (int64_t e = s * f.group; e < (s + 1) * f.group; ++e) {
            const float gw = grad_w[e];
            const int l = level_[e];
            // W = scale * value(l) - min. Inside the range, l follows the
            // position p(y) + v of y = (w + min) / scale, so with slopes su at
            // the rounded position and sy at y: dW/dv = scale * su, dW/dscale =
            // value(l) - y * su / sy, dW/dmin = 0. Clamped (or zero scale): l is
            // fixed, dW/dscale = value(l), dW/dmin = -1.
            if (scale != 0.0f) {
              const float u = offset_position(f, w_[e], scale, min, params_.offsets[e], pin_[e]);
              const int r = nearest_int(std::clamp(u, f.lo - 1.0f, f.hi + 1.0f));
              if (r >= f.lo && r <= f.hi) {
                const float y = (w_[e] + min) / scale;
                const float su = slope(f, u), sy = slope(f, position(f, y));
                g.offsets[e] = gw * scale * su;
                gs += static_cast<double>(gw) * (level_value(f, l) - y * su / sy);
                continue;
              }
            }
            gs += static_cast<double>(gw) * level_value(f, l);
            gm -= gw;
          }
          // The multipliers scale the encoded values: d scale / d mult = scale / mult.
          g.scale_mult[s] = static_cast<float>(gs * scale / params_.scale_mult[s]);
          if (f.affine) g.min_mult[s] = static_cast<float>(gm * min / params_.min_mult[s]);
        }
      },
      opt_.threads);
  return g;
}

void TrainableMatrix::step(const float* grad_w, float lr, float lr_scale) {
  Params g = gradients(grad_w);
  if (fmt_ == nullptr) {
    // Lattice types: re-quantizing costs ~35x a Q4_K step (bench_gradual_grad), so
    // the offsets move every step and reach the blocks every requant_every.
    for (size_t i = 0; i < pending_.size(); ++i)
      pending_[i] = std::clamp(pending_[i] - lr * sign_of(g.offsets[i]), -0.5f, 0.5f);
    if (++pending_steps_ >= std::max(1, opt_.requant_every)) {
      params_.offsets = pending_;
      pending_steps_ = 0;
      materialize();
    }
    return;
  }
  const float lo = 1.0f - opt_.scale_range, hi = 1.0f + opt_.scale_range;
  parallel_for(
      static_cast<int64_t>(w_.size()),
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          params_.offsets[i] = std::clamp(params_.offsets[i] - lr * sign_of(g.offsets[i]), -0.5f, 0.5f);
      },
      opt_.threads);
  for (size_t s = 0; s < g.scale_mult.size(); ++s)
    params_.scale_mult[s] = std::clamp(params_.scale_mult[s] - lr_scale * sign_of(g.scale_mult[s]), lo, hi);
  for (size_t s = 0; s < g.min_mult.size(); ++s)
    params_.min_mult[s] = std::clamp(params_.min_mult[s] - lr_scale * sign_of(g.min_mult[s]), lo, hi);
  materialize();
}

void TrainableMatrix::restore(const Params& p) {
  if (p.offsets.size() != params_.offsets.size() || p.scale_mult.size() != params_.scale_mult.size() ||
      p.min_mult.size() != params_.min_mult.size())
    fail("trainable rounding: {} parameters of another matrix shape", type_name(type_));
  const float lo = 1.0f - opt_.scale_range, hi = 1.0f + opt_.scale_range;
  params_ = p;
  for (float& v : params_.offsets) v = std::clamp(v, -0.5f, 0.5f);
  for (float& m : params_.scale_mult) m = std::clamp(m, lo, hi);
  for (float& m : params_.min_mult) m = std::clamp(m, lo, hi);
  if (fmt_ == nullptr) {
    pending_ = params_.offsets;
    pending_steps_ = 0;
  }
  materialize();
}

std::vector<float> TrainableMatrix::relaxed_weights(const Params& p) const {
  if (p.offsets.size() != params_.offsets.size() || p.scale_mult.size() != params_.scale_mult.size() ||
      p.min_mult.size() != params_.min_mult.size())
    fail("trainable rounding: {} parameters of another matrix shape", type_name(type_));
  std::vector<float> out(w_.size());
  if (fmt_ == nullptr) {
    for (size_t e = 0; e < w_.size(); ++e)
      out[e] = weights_[e] + (p.offsets[e] - params_.offsets[e]) * unit_[e / kUnitGroup];
    return out;
  }
  const Format& f = *fmt_;
  for (size_t s = 0; s < scale_.size(); ++s) {
    const float scale = scale_[s], min = min_[s];
    const float scale_p = scale * (p.scale_mult[s] / params_.scale_mult[s]);
    const float min_p = f.affine ? min * (p.min_mult[s] / params_.min_mult[s]) : 0.0f;
    for (size_t e = s * f.group; e < (s + 1) * f.group; ++e) {
      const int l = level_[e];
      float level = level_value(f, l);
      if (scale != 0.0f) {
        const float u = offset_position(f, w_[e], scale, min, params_.offsets[e], pin_[e]);
        const int r = nearest_int(std::clamp(u, f.lo - 1.0f, f.hi + 1.0f));
        if (r >= f.lo && r <= f.hi) {
          const float y = (w_[e] + min) / scale, y_p = (w_[e] + min_p) / scale_p;
          const float su = slope(f, u), sy = slope(f, position(f, y));
          level += su * ((y_p - y) / sy + (p.offsets[e] - params_.offsets[e]));
        }
      }
      out[e] = scale_p * level - min_p;
    }
  }
  return out;
}

double TrainableMatrix::weighted_error() const {
  double sum = 0.0;
  for (int64_t r = 0; r < rows_; ++r)
    for (int64_t c = 0; c < cols_; ++c) {
      const double d = static_cast<double>(weights_[r * cols_ + c]) - w_[r * cols_ + c];
      sum += (importance_.empty() ? 1.0 : importance_[c]) * d * d;
    }
  return sum;
}

}  // namespace tailor::gradual
