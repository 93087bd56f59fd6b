// Planning: knees on synthetic cost curves, and the budget allocator against
// brute force on small random instances, with rules, floors, row lengths and
// infeasible budgets.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>

#include "tailor/plan/allocate.h"
#include "tailor/plan/knee.h"
#include "tailor/util/error.h"

using namespace tailor;
using namespace tailor::plan;

namespace {

// Bytes of a rows x cols tensor in type t (nominal when rows do not fit, so
// the allocator's own row check is what rules such options out).
int64_t bytes_of(GgmlType t, int64_t rows = 4096, int64_t cols = 4096) {
  if (!row_fits(t, cols)) return static_cast<int64_t>(type_info(t).bits_per_weight() * rows * cols / 8);
  return static_cast<int64_t>(row_size(t, cols)) * rows;
}

TensorOptions curve(const std::string& name, const std::vector<std::pair<GgmlType, double>>& costs,
                    double err = 0, int64_t rows = 4096, int64_t cols = 4096) {
  TensorOptions t;
  t.name = name;
  t.n_elements = rows * cols;
  t.row_length = cols;
  for (auto [type, c] : costs) t.options.push_back({type, bytes_of(type, rows, cols), c, err, true});
  return t;
}

}  // namespace

// ---- knees ----------------------------------------------------------------

// The six K-ladder types (Q8_0 .. Q2_K) with the given costs.
TensorOptions ladder6(const std::vector<double>& costs, double err) {
  const GgmlType types[] = {GgmlType::Q8_0, GgmlType::Q6_K, GgmlType::Q5_K,
                            GgmlType::Q4_K, GgmlType::Q3_K, GgmlType::Q2_K};
  std::vector<std::pair<GgmlType, double>> c;
  for (size_t i = 0; i < costs.size(); ++i) c.push_back({types[i], costs[i]});
  return curve("blk.0.attn_q.weight", c, err);
}

TEST(PlanKnee, FindsTheCliff) {
  // Gentle down to Q4_K, then each bit saved costs ~10x more.
  auto t = ladder6({0.001, 0.002, 0.0035, 0.0055, 0.03, 0.09}, 0.0002);
  Knee k = find_knee(t);
  EXPECT_TRUE(k.found) << k.reason;
  EXPECT_EQ(k.type, GgmlType::Q4_K) << k.reason;
  EXPECT_GT(k.per_bit_below / k.per_bit_above, 3.0);
  EXPECT_NE(k.reason.find("Q4_K"), std::string::npos);
}

TEST(PlanKnee, SmoothGeometricCurveHasNoKnee) {
  // Cost quadruples for every bit saved: the same bend everywhere.
  std::vector<double> c;
  for (GgmlType ty : {GgmlType::Q8_0, GgmlType::Q6_K, GgmlType::Q5_K, GgmlType::Q4_K, GgmlType::Q3_K, GgmlType::Q2_K})
    c.push_back(std::pow(4.0, -type_info(ty).bits_per_weight()));
  Knee k = find_knee(ladder6(c, 0));
  EXPECT_FALSE(k.found) << k.reason;
  EXPECT_EQ(k.type, GgmlType::Q8_0);
}

TEST(PlanKnee, NoisyOptimisticPointDoesNotMakeAKnee) {
  // Smooth curve, but Q5_K was measured far too low with a wide error bar.
  // Without its error bar it would be a sharp bend; with it, not significant.
  auto t = ladder6({0.0010, 0.0040, 0.0045, 0.0200, 0.0500, 0.1100}, 0.0003);
  t.options[2].cost_error = 0.006;
  Knee k = find_knee(t);
  EXPECT_FALSE(k.found) << k.reason;
  // The same point with a tight error bar is a real bend: the test can fail.
  t.options[2].cost_error = 0.0001;
  Knee k2 = find_knee(t);
  EXPECT_TRUE(k2.found) << k2.reason;
  EXPECT_EQ(k2.type, GgmlType::Q5_K);
}

TEST(PlanKnee, NoisyPessimisticPointIsIgnoredByTheHull) {
  // Q5_K measured far too high: off the hull, the cliff at Q4_K stays.
  auto t = ladder6({0.001, 0.002, 0.02, 0.0055, 0.03, 0.09}, 0.0002);
  Knee k = find_knee(t);
  EXPECT_TRUE(k.found) << k.reason;
  EXPECT_EQ(k.type, GgmlType::Q4_K);
}

TEST(PlanKnee, ZeroCostAtTheTopDoesNotDistort) {
  // F16 is exact (cost 0, and a measured -1e-6 of noise must not matter).
  for (double top : {0.0, -1e-6}) {
    auto t = curve("t", {{GgmlType::F16, top},
                         {GgmlType::Q8_0, 1e-5},
                         {GgmlType::Q6_K, 4e-5},
                         {GgmlType::Q5_K, 1e-4},
                         {GgmlType::Q4_K, 3e-4},
                         {GgmlType::Q3_K, 3e-3},
                         {GgmlType::Q2_K, 1e-2}});
    Knee k = find_knee(t);
    EXPECT_TRUE(k.found) << k.reason;
    EXPECT_EQ(k.type, GgmlType::Q4_K) << k.reason;
  }
}

TEST(PlanKnee, TooFewTypes) {
  auto t = curve("t", {{GgmlType::Q8_0, 0.001}, {GgmlType::Q4_K, 0.01}});
  Knee k = find_knee(t);
  EXPECT_FALSE(k.found);
  EXPECT_EQ(k.type, GgmlType::Q8_0);
  TensorOptions empty;
  empty.name = "x";
  EXPECT_THROW(find_knee(empty), Error);
}

TEST(PlanHull, DropsDominatedAndConcavePoints) {
  std::vector<TypeOption> o = {
      {GgmlType::Q2_K, 100, 10.0}, {GgmlType::Q3_K, 200, 4.0}, {GgmlType::Q4_K, 300, 3.5},  // Q4_K above chord
      {GgmlType::Q5_K, 400, 1.0},  {GgmlType::Q6_K, 500, 1.5},                             // Q6_K dominated
  };
  EXPECT_EQ(lower_hull(o), (std::vector<size_t>{0, 1, 3}));
}

// ---- rules ----------------------------------------------------------------

TEST(PlanRules, ParseAndMatchWholeNameParts) {
  Rule pin = parse_rule("output.weight=Q8_0");
  EXPECT_EQ(pin.kind, Rule::Kind::Pin);
  EXPECT_EQ(pin.type, GgmlType::Q8_0);
  EXPECT_TRUE(pin.matches("output.weight"));
  EXPECT_FALSE(pin.matches("blk.0.attn_output.weight"));
  Rule v = parse_rule(" attn_v = q6_k+ ");
  EXPECT_EQ(v.kind, Rule::Kind::AtLeast);
  EXPECT_EQ(v.type, GgmlType::Q6_K);
  EXPECT_TRUE(v.matches("blk.3.attn_v.weight"));
  EXPECT_FALSE(v.matches("blk.3.attn_v_extra.weight"));
  Rule f = parse_rule("attn_(q|k)>=Q4_K");
  EXPECT_EQ(f.kind, Rule::Kind::Floor);
  EXPECT_DOUBLE_EQ(f.min_bpw, 4.5);
  EXPECT_TRUE(f.matches("blk.1.attn_k.weight"));
  EXPECT_FALSE(f.matches("blk.1.attn_qkv.weight"));
  EXPECT_DOUBLE_EQ(parse_rule("ffn_.*>=3.25").min_bpw, 3.25);
  EXPECT_TRUE(parse_rule("blk\\.[0-2]\\.ffn_down=Q6_K").matches("blk.2.ffn_down.weight"));
  EXPECT_FALSE(parse_rule("blk\\.[0-2]\\.ffn_down=Q6_K").matches("blk.12.ffn_down.weight"));
  for (const char* bad : {"attn_v", "=Q4_K", "attn_v=Q4_KK", "attn_v=", "attn_(v=Q4_K", "x>=fast", "x>=-1"})
    EXPECT_THROW(parse_rule(bad), Error) << bad;
}

// ---- allocation -------------------------------------------------------------

namespace {

const GgmlType kLadder[] = {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                            GgmlType::Q6_K, GgmlType::Q8_0, GgmlType::F16};

// Random instance: tensors of random sizes, random subsets of the ladder,
// costs roughly falling with bits but noisy (non-convex, sometimes dominated).
std::vector<TensorOptions> random_instance(std::mt19937& rng, int n_tensors, int max_types) {
  std::vector<TensorOptions> ts;
  std::uniform_int_distribution<int> rows(1, 64), ntypes(1, max_types);
  std::uniform_real_distribution<double> u(0, 1);
  for (int i = 0; i < n_tensors; ++i) {
    TensorOptions t;
    t.name = "blk." + std::to_string(i) + ".ffn_up.weight";
    int64_t r = rows(rng);
    t.row_length = 256;
    t.n_elements = r * 256;
    std::vector<GgmlType> pick(std::begin(kLadder), std::end(kLadder));
    std::shuffle(pick.begin(), pick.end(), rng);
    pick.resize(ntypes(rng));
    double scale = 0.01 + u(rng);
    for (GgmlType ty : pick) {
      double b = type_info(ty).bits_per_weight();
      double cost = scale * std::pow(2.0, -b) * (0.6 + 0.8 * u(rng));
      t.options.push_back({ty, bytes_of(ty, r, 256), cost, 0.0, true});
    }
    ts.push_back(std::move(t));
  }
  return ts;
}

struct Brute {
  bool feasible = false;
  double best = std::numeric_limits<double>::infinity();
};

Brute brute_force(const std::vector<TensorOptions>& ts, const Budget& b) {
  Brute out;
  std::vector<size_t> idx(ts.size(), 0);
  for (;;) {
    double bytes = 0, cost = 0;
    for (size_t i = 0; i < ts.size(); ++i) {
      bytes += static_cast<double>(ts[i].options[idx[i]].bytes);
      cost += ts[i].options[idx[i]].cost;
    }
    bool ok = b.kind == Budget::Kind::Bytes ? bytes <= b.value : cost <= b.value * (1 + 1e-12);
    double obj = b.kind == Budget::Kind::Bytes ? cost : bytes;
    if (ok) {
      out.feasible = true;
      out.best = std::min(out.best, obj);
    }
    size_t k = 0;
    while (k < ts.size() && ++idx[k] == ts[k].options.size()) idx[k++] = 0;
    if (k == ts.size()) break;
  }
  return out;
}

void check_against_brute(Budget::Kind kind, const AllocateOptions& opt, bool expect_exact, double* worst_rel_gap,
                         int* n_exact, int* n_total) {
  std::mt19937 rng(kind == Budget::Kind::Bytes ? 1234 : 4321);
  std::uniform_real_distribution<double> u(0, 1);
  for (int inst = 0; inst < 300; ++inst) {
    auto ts = random_instance(rng, 2 + inst % 6, 5);
    double lo = 0, hi = 0;
    for (const auto& t : ts) {
      double mn = std::numeric_limits<double>::infinity(), mx = 0;
      for (const auto& o : t.options) {
        double w = kind == Budget::Kind::Bytes ? static_cast<double>(o.bytes) : o.cost;
        mn = std::min(mn, w);
        mx = std::max(mx, w);
      }
      lo += mn;
      hi += mx;
    }
    Budget b{kind, lo + (hi - lo) * u(rng)};
    if (kind == Budget::Kind::Bytes) b.value = std::floor(b.value);
    Brute ref = brute_force(ts, b);
    ASSERT_TRUE(ref.feasible);
    Allocation a = allocate(ts, b, opt);
    double obj = kind == Budget::Kind::Bytes ? a.total_cost : static_cast<double>(a.total_bytes);
    double tol = 1e-9 * std::max(1.0, std::fabs(ref.best));
    // Feasible, never better than the optimum, the bound really is a bound,
    // and the answer is within the reported gap of the optimum.
    if (kind == Budget::Kind::Bytes) {
      EXPECT_LE(a.total_bytes, static_cast<int64_t>(b.value));
    } else {
      EXPECT_LE(a.total_cost, b.value * (1 + 1e-12));
    }
    EXPECT_NEAR(a.objective, obj, tol);
    EXPECT_GE(obj, ref.best - tol) << "instance " << inst;
    EXPECT_LE(a.lower_bound, ref.best + tol) << "instance " << inst;
    EXPECT_LE(obj - ref.best, a.gap + tol) << "instance " << inst;
    if (expect_exact) {
      EXPECT_TRUE(a.proven_optimal) << "instance " << inst;
    }
    if (a.proven_optimal) {
      EXPECT_NEAR(obj, ref.best, tol) << "instance " << inst;
    }
    *n_exact += std::fabs(obj - ref.best) <= tol;
    ++*n_total;
    *worst_rel_gap = std::max(*worst_rel_gap, (obj - ref.best) / std::max(ref.best, 1e-300));
  }
}

}  // namespace

TEST(PlanAllocate, MatchesBruteForceUnderSizeBudget) {
  double worst = 0;
  int exact = 0, total = 0;
  check_against_brute(Budget::Kind::Bytes, {}, true, &worst, &exact, &total);
  std::printf("size budget: %d/%d instances optimal, worst excess over optimum %.3g%%\n", exact, total, 100 * worst);
  EXPECT_EQ(exact, total);
}

TEST(PlanAllocate, MatchesBruteForceUnderCostBudget) {
  double worst = 0;
  int exact = 0, total = 0;
  check_against_brute(Budget::Kind::Cost, {}, true, &worst, &exact, &total);
  std::printf("cost budget: %d/%d instances optimal, worst excess over optimum %.3g%%\n", exact, total, 100 * worst);
  EXPECT_EQ(exact, total);
}

TEST(PlanAllocate, WithoutExactSearchStaysWithinReportedGap) {
  // The Lagrangian fill and the swap pass alone: not always optimal, but
  // always feasible and within the reported gap.
  AllocateOptions opt;
  opt.max_search_tensors = 0;
  double worst = 0;
  int exact = 0, total = 0;
  check_against_brute(Budget::Kind::Bytes, opt, false, &worst, &exact, &total);
  std::printf("greedy + swaps only: %d/%d optimal, worst excess %.3g%%\n", exact, total, 100 * worst);
  EXPECT_GT(exact, total / 2);
}

TEST(PlanAllocate, LooseBudgetGivesEveryTensorItsBest) {
  std::mt19937 rng(7);
  auto ts = random_instance(rng, 20, 7);
  Allocation a = allocate(ts, {Budget::Kind::Bytes, 1e15});
  for (size_t i = 0; i < ts.size(); ++i) {
    double best = std::numeric_limits<double>::infinity();
    for (const auto& o : ts[i].options) best = std::min(best, o.cost);
    EXPECT_DOUBLE_EQ(a.choices[i].cost, best);
  }
  EXPECT_TRUE(a.proven_optimal);
  EXPECT_DOUBLE_EQ(a.gap, 0);
}

namespace {

std::vector<TensorOptions> model_like() {
  std::vector<TensorOptions> ts;
  std::vector<std::pair<GgmlType, double>> ladder;
  for (GgmlType ty : kLadder) ladder.push_back({ty, std::pow(2.0, -type_info(ty).bits_per_weight())});
  for (int l = 0; l < 4; ++l)
    for (const char* part : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_up"})
      ts.push_back(curve("blk." + std::to_string(l) + "." + part + ".weight", ladder, 0, 64, 512));
  ts.push_back(curve("output.weight", ladder, 0, 64, 512));
  // A row of 544 elements: 17 blocks of 32, not a multiple of 256.
  ts.push_back(curve("blk.0.ffn_down.weight", ladder, 0, 64, 544));
  return ts;
}

}  // namespace

TEST(PlanAllocate, HonoursPinsFloorsAllowedAndRowLengths) {
  auto ts = model_like();
  // The ffn_down options claim K-quant sizes; row_fits must rule those out.
  AllocateOptions opt;
  opt.rules = {parse_rule("output.weight=Q8_0"), parse_rule("attn_v=Q6_K+"), parse_rule("attn_(q|k)>=Q4_K")};
  opt.allowed = {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_0};
  // Three quarters of everything at Q8_0: above what the floors need, so the
  // budget binds but is feasible.
  double budget = 0;
  for (const auto& t : ts) budget += 0.75 * static_cast<double>(bytes_of(GgmlType::Q8_0, 64, t.row_length));
  Allocation a = allocate(ts, {Budget::Kind::Bytes, budget}, opt);
  for (size_t i = 0; i < ts.size(); ++i) {
    const std::string& n = ts[i].name;
    GgmlType ty = a.choices[i].type;
    double bpw = type_info(ty).bits_per_weight();
    EXPECT_NE(ty, GgmlType::F16) << n;
    EXPECT_TRUE(row_fits(ty, ts[i].row_length)) << n;
    if (n == "output.weight") {
      EXPECT_EQ(ty, GgmlType::Q8_0);
      EXPECT_TRUE(a.choices[i].pinned);
      EXPECT_NE(a.choices[i].reason.find("output.weight=Q8_0"), std::string::npos) << a.choices[i].reason;
    } else {
      EXPECT_FALSE(a.choices[i].pinned) << n;
    }
    if (n.find("attn_v") != std::string::npos) {
      EXPECT_GE(bpw, 6.5625) << n;
    }
    if (n.find("attn_q") != std::string::npos || n.find("attn_k") != std::string::npos) {
      EXPECT_GE(bpw, 4.5) << n;
    }
    if (n == "blk.0.ffn_down.weight") {
      EXPECT_EQ(ty, GgmlType::Q8_0) << "only Q8_0 of the allowed fits 544";
    }
  }
  EXPECT_LE(a.total_bytes, budget);
  EXPECT_GT(a.total_bytes, 0.95 * budget);
  EXPECT_TRUE(a.unmatched_rules.empty());
  opt.rules.push_back(parse_rule("atn_v=Q8_0"));
  EXPECT_EQ(allocate(ts, {Budget::Kind::Bytes, budget}, opt).unmatched_rules, std::vector<std::string>{"atn_v=Q8_0"});
  // The budget must bind somewhere: not everything sits at Q8_0.
  int below = 0;
  for (const auto& c : a.choices) below += c.type != GgmlType::Q8_0;
  EXPECT_GT(below, 0);
}

TEST(PlanAllocate, ConflictsAndImpossibleRulesAreErrors) {
  auto ts = model_like();
  AllocateOptions opt;
  opt.rules = {parse_rule("output.weight=Q8_0"), parse_rule("output=Q4_K")};
  try {
    allocate(ts, {Budget::Kind::Bytes, 1e12}, opt);
    FAIL() << "conflicting pins accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("output.weight"), std::string::npos) << e.what();
  }
  opt.rules = {parse_rule("ffn_down=Q4_K")};  // 544 is not a multiple of 256
  EXPECT_THROW(allocate(ts, {Budget::Kind::Bytes, 1e12}, opt), Error);
  opt.rules = {parse_rule("attn_q>=9")};  // only F16 has more than 9 bits
  opt.allowed = {GgmlType::Q4_K, GgmlType::Q8_0};
  EXPECT_THROW(allocate(ts, {Budget::Kind::Bytes, 1e12}, opt), Error);
}

TEST(PlanAllocate, InfeasibleBudgetsSayTheMinimum) {
  auto ts = model_like();
  int64_t min_bytes = 0;
  double min_cost = 0;
  for (const auto& t : ts) {
    int64_t mb = std::numeric_limits<int64_t>::max();
    double mc = std::numeric_limits<double>::infinity();
    for (const auto& o : t.options)
      if (row_fits(o.type, t.row_length)) mb = std::min(mb, o.bytes), mc = std::min(mc, o.cost);
    min_bytes += mb;
    min_cost += mc;
  }
  try {
    allocate(ts, {Budget::Kind::Bytes, static_cast<double>(min_bytes - 1)});
    FAIL() << "infeasible size budget accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(min_bytes)), std::string::npos) << e.what();
  }
  // Exactly the minimum is feasible.
  Allocation a = allocate(ts, {Budget::Kind::Bytes, static_cast<double>(min_bytes)});
  EXPECT_EQ(a.total_bytes, min_bytes);
  try {
    allocate(ts, {Budget::Kind::Cost, min_cost * 0.99});
    FAIL() << "infeasible cost budget accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("{:.6g}", min_cost)), std::string::npos) << e.what();
  }
  EXPECT_THROW(allocate(ts, {Budget::Kind::Bytes, -1}), Error);
  EXPECT_THROW(allocate(ts, {Budget::Kind::Cost, std::nan("")}), Error);
}

TEST(PlanAllocate, ModelSizedInstancesAreProvenOptimal) {
  // 300 tensors x up to 7 noisy types: too many for brute force, but the
  // reduced-cost test plus the exact search settle it; the search-free mode
  // can only be as good or worse.
  std::mt19937 rng(11);
  auto ts = random_instance(rng, 300, 7);
  for (Budget::Kind kind : {Budget::Kind::Bytes, Budget::Kind::Cost}) {
    double lo = 0, hi = 0;
    for (const auto& t : ts) {
      double mn = std::numeric_limits<double>::infinity(), mx = 0;
      for (const auto& o : t.options) {
        double w = kind == Budget::Kind::Bytes ? static_cast<double>(o.bytes) : o.cost;
        mn = std::min(mn, w), mx = std::max(mx, w);
      }
      lo += mn, hi += mx;
    }
    for (double f : {0.1, 0.4, 0.8}) {
      Budget b{kind, std::floor(lo + f * (hi - lo))};
      if (kind == Budget::Kind::Cost) b.value = lo + f * (hi - lo);
      Allocation a = allocate(ts, b);
      EXPECT_TRUE(a.proven_optimal) << f;
      EXPECT_LE(a.lower_bound, a.objective);
      AllocateOptions no_search;
      no_search.max_search_tensors = 0;
      Allocation h = allocate(ts, b, no_search);
      EXPECT_GE(h.objective, a.objective * (1 - 1e-12)) << f;
      std::printf("%s budget at %.0f%%: relative Lagrangian gap %.3g, search-free answer %.3g%% worse\n",
                  kind == Budget::Kind::Bytes ? "size" : "cost", 100 * f, a.gap / a.objective,
                  100 * (h.objective / a.objective - 1));
    }
  }
}

TEST(PlanAllocate, TiesEverywhereStillSettle) {
  // Identical tensors whose cost falls linearly with bits: every option of
  // every tensor lies on one line, the worst case for the bound's reduction.
  std::vector<TensorOptions> ts;
  for (int i = 0; i < 400; ++i) {
    TensorOptions t{"blk." + std::to_string(i) + ".ffn_up.weight", 256 * 4096, 4096, {}};
    for (GgmlType ty : kLadder)
      t.options.push_back({ty, bytes_of(ty, 256, 4096), 20 - type_info(ty).bits_per_weight(), 0, true});
    ts.push_back(std::move(t));
  }
  // Every size is a multiple of 8192 bytes and cost falls linearly with
  // size, so the optimum uses the budget rounded down to 8192 exactly; the
  // Lagrangian bound (a fractional fill) cannot prove that, the answer must
  // still reach it.
  double elements = 400.0 * 256 * 4096;
  double budget = std::floor(elements * 4.1 / 8);
  Allocation a = allocate(ts, {Budget::Kind::Bytes, budget});
  EXPECT_EQ(a.total_bytes, static_cast<int64_t>(budget) / 8192 * 8192);
  EXPECT_LE(a.gap, 1e-4 * a.objective);
}
