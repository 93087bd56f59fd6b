// The knee of one tensor's cost curve: the type below which every bit saved
// starts to cost much more predicted damage than the bits saved above it.
// Used as advice next to the budget-driven choice, and recorded per tensor in
// strategy files so a person editing one sees where the cliff is.
#pragma once
#include <string>

#include "tailor/plan/options.h"

namespace tailor::plan {

struct KneeOptions {
  // The jump must exceed this many of its own standard errors (from the
  // error bars of the three types involved) to count.
  double sigmas = 2.0;
  // Below the knee each bit saved must multiply the cost by at least this
  // factor more than each bit saved above it. Measured on log cost, so a
  // smooth geometric curve (cost times a constant per bit, whatever the
  // spacing of the types) has no knee.
  double min_factor = 2.0;
};

struct Knee {
  bool found = false;
  GgmlType type = GgmlType::F16;  // the type just above the knee; without one, the lowest-cost type
  double per_bit_below = 0;       // cost multiplies by this per bit saved below the knee
  double per_bit_above = 0;       // ... and by this per bit saved above it
  double z = 0;                   // the jump in standard errors (infinite without error bars)
  std::string reason;             // one line for people, e.g. in a strategy file
};

// Looks at the tensor's options in bits-per-weight order, on their lower
// convex hull so a single point that is too pessimistic cannot make a bend;
// the bend at a hull point is the rise of d(log cost)/d(bits saved) there.
// A point that is too optimistic makes a bend, but its error bar then makes
// the bend insignificant. Throws Error when the tensor has no options.
Knee find_knee(const TensorOptions& tensor, const KneeOptions& opt = {});

}  // namespace tailor::plan
