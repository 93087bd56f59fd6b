#include <cmath>
#include <numbers>

#include "tailor/engine/backend.h"
#include "tailor/util/error.h"

namespace tailor::engine {

std::vector<double> rope_inv_freq(int64_t rot_dim, double theta, const RopeScaling& s) {
  if (rot_dim <= 0 || rot_dim % 2 != 0) fail("rope: rotary dimension {} is not a positive even number", rot_dim);
  if (!(theta > 0)) fail("rope: theta {} is not positive", theta);
  if (s.kind != RopeScaling::Kind::None && !(s.factor > 0))
    fail("rope: scaling factor {} is not positive", s.factor);
  std::vector<double> inv(rot_dim / 2);
  for (int64_t i = 0; i < rot_dim / 2; ++i)
    inv[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(rot_dim));
  if (s.kind == RopeScaling::Kind::Linear) {
    for (double& f : inv) f /= s.factor;
  } else if (s.kind == RopeScaling::Kind::Llama3) {
    if (!(s.high_freq_factor > s.low_freq_factor) || !(s.low_freq_factor > 0) ||
        !(s.original_max_position > 0))
      fail("rope: llama3 scaling needs 0 < low_freq_factor < high_freq_factor and a positive "
           "original_max_position_embeddings (got {}, {}, {})",
           s.low_freq_factor, s.high_freq_factor, s.original_max_position);
    // Wavelengths longer than the original context / low_freq_factor are
    // slowed by `factor`, shorter than context / high_freq_factor are kept,
    // and the band between blends the two linearly in context / wavelength.
    const double low_wavelen = s.original_max_position / s.low_freq_factor;
    const double high_wavelen = s.original_max_position / s.high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f /= s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (s.original_max_position / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        f = (1 - smooth) * f / s.factor + smooth * f;
      }
    }
  }
  return inv;
}

RopeTable make_rope_table(std::span<const int64_t> positions, int64_t rot_dim, double theta,
                          const RopeScaling& scaling) {
  const std::vector<double> inv = rope_inv_freq(rot_dim, theta, scaling);
  const size_t half = inv.size();
  RopeTable table;
  table.rot_dim = rot_dim;
  table.cos.resize(positions.size() * half);
  table.sin.resize(positions.size() * half);
  for (size_t t = 0; t < positions.size(); ++t)
    for (size_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(positions[t]) * inv[i];
      table.cos[t * half + i] = static_cast<float>(std::cos(angle));
      table.sin[t * half + i] = static_cast<float>(std::sin(angle));
    }
  return table;
}

}  // namespace tailor::engine
