#include "tailor/plan/allocate.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <regex>
#include <set>

#include "tailor/util/error.h"

namespace tailor::plan {
namespace {

constexpr size_t kMaxPatternLength = 512;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

// ---- rules ---------------------------------------------------------------

bool Rule::matches(std::string_view name) const {
  // Compiled on first use and cached per pattern text, so Rule stays a plain
  // value and a plan over many tensors compiles each pattern once.
  thread_local std::map<std::string, std::regex, std::less<>> cache;
  auto it = cache.find(pattern);
  if (it == cache.end()) {
    if (pattern.empty() || pattern.size() > kMaxPatternLength) fail("rule '{}': bad pattern length", text);
    if (cache.size() >= 1024) cache.clear();
    try {
      it = cache.emplace(pattern, std::regex("(?:^|\\.)(?:" + pattern + ")(?:\\.|$)", std::regex::ECMAScript)).first;
    } catch (const std::regex_error& e) {
      fail("rule '{}': invalid pattern: {}", text, e.what());
    }
  }
  return std::regex_search(name.begin(), name.end(), it->second);
}

Rule parse_rule(std::string_view text) {
  text = trim(text);
  Rule r;
  r.text = std::string(text);
  size_t eq = text.rfind('=');
  if (eq == std::string_view::npos || eq == 0)
    fail("rule '{}': expected PATTERN=TYPE, PATTERN=TYPE+ or PATTERN>=TYPE|BPW", r.text);
  bool floor = text[eq - 1] == '>';
  std::string_view pattern = trim(text.substr(0, floor ? eq - 1 : eq));
  std::string_view rhs = trim(text.substr(eq + 1));
  if (pattern.empty()) fail("rule '{}': empty tensor pattern", r.text);
  if (pattern.size() > kMaxPatternLength) fail("rule '{}...': pattern longer than {} characters", r.text.substr(0, 40), kMaxPatternLength);
  if (rhs.empty()) fail("rule '{}': missing type", r.text);
  r.pattern = std::string(pattern);
  try {
    std::regex check(r.pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    fail("rule '{}': invalid pattern: {}", r.text, e.what());
  }
  bool plus = !floor && rhs.back() == '+';
  if (plus) rhs = trim(rhs.substr(0, rhs.size() - 1));
  if (const TypeInfo* t = find_type(rhs)) {
    r.type = t->type;
    r.min_bpw = t->bits_per_weight();
    r.kind = floor ? Rule::Kind::Floor : plus ? Rule::Kind::AtLeast : Rule::Kind::Pin;
    return r;
  }
  if (floor) {
    double bpw = 0;
    auto [end, ec] = std::from_chars(rhs.data(), rhs.data() + rhs.size(), bpw);
    if (ec == std::errc() && end == rhs.data() + rhs.size() && std::isfinite(bpw) && bpw >= 0 && bpw <= 64) {
      r.kind = Rule::Kind::Floor;
      r.min_bpw = bpw;
      return r;
    }
    fail("rule '{}': '{}' is neither a type name nor bits per weight", r.text, rhs);
  }
  fail("rule '{}': unknown type '{}'", r.text, rhs);
}

// ---- usable options ------------------------------------------------------

Usable usable_options(const TensorOptions& t, const AllocateOptions& opt) {
  Usable u;
  const Rule* pin = nullptr;
  double min_bpw = 0;
  const Rule* tightest = nullptr;
  std::string why;
  for (const Rule& r : opt.rules) {
    if (!r.matches(t.name)) continue;
    if (!why.empty()) why += ", ";
    why += "'" + r.text + "'";
    if (r.kind == Rule::Kind::Pin) {
      if (pin != nullptr && pin->type != r.type)
        fail("{}: rules '{}' and '{}' pin different types", t.name, pin->text, r.text);
      pin = &r;
    } else if (r.min_bpw > min_bpw) {
      min_bpw = r.min_bpw;
      tightest = &r;
    }
  }
  for (size_t i = 0; i < t.options.size(); ++i) {
    const TypeOption& o = t.options[i];
    if (!std::isfinite(o.cost) || !std::isfinite(o.cost_error) || o.bytes < 0)
      fail("{}: option {} has a negative size or a non-finite cost", t.name, type_name(o.type));
    if (!opt.allowed.empty() && std::find(opt.allowed.begin(), opt.allowed.end(), o.type) == opt.allowed.end())
      continue;
    if (t.row_length > 0 && !row_fits(o.type, t.row_length)) continue;
    if (pin != nullptr && o.type != pin->type) continue;
    if (type_info(o.type).bits_per_weight() < min_bpw - 1e-9) continue;
    u.options.push_back(i);
  }
  u.pinned = pin != nullptr;
  u.why = why;
  if (u.options.empty()) {
    if (pin != nullptr)
      fail("{}: rule '{}' pins {}, which is not a usable candidate (not offered, not allowed, or rows of {} do not fit)",
           t.name, pin->text, type_name(pin->type), t.row_length);
    if (tightest != nullptr)
      fail("{}: no usable type at or above {:.4g} bits per weight (rule '{}', row length {})", t.name, min_bpw,
           tightest->text, t.row_length);
    fail("{}: no usable type (none offered is allowed and fits rows of {})", t.name, t.row_length);
  }
  return u;
}

// ---- the knapsack ---------------------------------------------------------

namespace {

// Generic form: minimise the sum of v subject to the sum of w <= cap, one item
// per group. A Bytes budget is (w = bytes, v = cost), a Cost budget the swap.
struct Item {
  double w = 0, v = 0;
  size_t option = 0;  // index into the tensor's options
};

struct Group {
  std::vector<Item> items;  // efficient frontier: w rising, v strictly falling
  std::vector<size_t> hull; // indices into items
  size_t cur = 0;           // chosen item
};

struct Segment {
  size_t group = 0, from = 0, to = 0;  // item indices
  double dw = 0, dv = 0, gain = 0;     // gain = -dv/dw, v saved per unit of w
};

struct Solution {
  double objective = 0, lower_bound = 0, lambda = 0;
  bool proven = false;
};

double total_w(const std::vector<Group>& g) {
  double s = 0;
  for (const Group& x : g) s += x.items[x.cur].w;
  return s;
}
double total_v(const std::vector<Group>& g) {
  double s = 0;
  for (const Group& x : g) s += x.items[x.cur].v;
  return s;
}

// Exact search over `open` groups (the rest fixed at their current item) by
// dynamic programming on (w, v) states kept Pareto-minimal, pruned by
// feasibility and by the Lagrangian bound against the incumbent. Returns true
// when it finished without dropping states (so its answer is exact).
bool search(std::vector<Group>& groups, const std::vector<size_t>& open,
            const std::vector<std::vector<size_t>>& candidates, double cap, double tol_w, double lambda,
            size_t max_states, size_t max_work) {
  if (open.empty()) return true;
  double fixed_w = 0, fixed_v = 0;
  std::vector<char> is_open(groups.size(), 0);
  for (size_t g : open) is_open[g] = 1;
  for (size_t g = 0; g < groups.size(); ++g)
    if (!is_open[g]) {
      fixed_w += groups[g].items[groups[g].cur].w;
      fixed_v += groups[g].items[groups[g].cur].v;
    }
  double incumbent = 0;
  for (size_t g : open) incumbent += groups[g].items[groups[g].cur].v;
  double tol_v = 1e-12 * std::max(1.0, std::fabs(incumbent + fixed_v));
  double room = cap - fixed_w;
  // Suffix sums over the remaining open groups: least w, and the Lagrangian
  // minimum of v + lambda*w.
  size_t n = open.size();
  std::vector<double> rest_min_w(n + 1, 0), rest_min_l(n + 1, 0);
  for (size_t k = n; k-- > 0;) {
    double mw = std::numeric_limits<double>::infinity(), ml = mw;
    for (size_t j : candidates[k]) {
      const Item& it = groups[open[k]].items[j];
      mw = std::min(mw, it.w);
      ml = std::min(ml, it.v + lambda * it.w);
    }
    rest_min_w[k] = rest_min_w[k + 1] + mw;
    rest_min_l[k] = rest_min_l[k + 1] + ml;
  }
  struct State { double w, v; uint32_t parent, item; };
  std::vector<std::vector<State>> stages(n + 1);
  stages[0].push_back({0, 0, 0, 0});
  bool exact = true;
  std::vector<State> next;
  size_t work = 0;
  for (size_t k = 0; k < n; ++k) {
    next.clear();
    const auto& prev = stages[k];
    // Out of effort: keep the incumbent, the caller improves it locally.
    work += prev.size() * candidates[k].size();
    if (work > max_work) return false;
    for (uint32_t p = 0; p < prev.size(); ++p)
      for (size_t j : candidates[k]) {
        const Item& it = groups[open[k]].items[j];
        State s{prev[p].w + it.w, prev[p].v + it.v, p, static_cast<uint32_t>(j)};
        if (s.w + rest_min_w[k + 1] > room + tol_w) continue;
        // Whatever the remaining groups pick, v cannot fall below this.
        double bound = s.v + rest_min_l[k + 1] - lambda * (room - s.w);
        if (bound >= incumbent - tol_v) continue;
        next.push_back(s);
      }
    std::sort(next.begin(), next.end(),
              [](const State& a, const State& b) { return a.w != b.w ? a.w < b.w : a.v < b.v; });
    auto& cur = stages[k + 1];
    for (const State& s : next)
      if (cur.empty() || s.v < cur.back().v - tol_v) cur.push_back(s);
    if (cur.size() > max_states) {
      // Keep an even spread across the w range; the answer is then only a
      // good feasible one, and the caller reports the bound gap.
      std::vector<State> thin;
      double step = static_cast<double>(cur.size()) / static_cast<double>(max_states);
      for (size_t i = 0; i < max_states; ++i) thin.push_back(cur[static_cast<size_t>(i * step)]);
      cur.swap(thin);
      exact = false;
    }
    if (cur.empty()) return exact;  // nothing beats the incumbent
  }
  const auto& last = stages[n];
  size_t best = 0;
  for (size_t i = 1; i < last.size(); ++i)
    if (last[i].v < last[best].v) best = i;
  if (last[best].v >= incumbent - tol_v) return exact;
  uint32_t idx = static_cast<uint32_t>(best);
  for (size_t k = n; k-- > 0;) {
    const State& s = stages[k + 1][idx];
    groups[open[k]].cur = s.item;
    idx = s.parent;
  }
  return exact;
}

// Local improvement for when the exact search had to give up: single moves,
// then pairs (one group down to free room, another up), best first.
void improve(std::vector<Group>& groups, double cap, double tol_w) {
  for (int round = 0; round < 64; ++round) {
    double room = cap - total_w(groups);
    // Single moves.
    double best_gain = 0;
    size_t bg = 0, bj = 0;
    for (size_t g = 0; g < groups.size(); ++g) {
      const Item& c = groups[g].items[groups[g].cur];
      for (size_t j = 0; j < groups[g].items.size(); ++j) {
        const Item& it = groups[g].items[j];
        double gain = c.v - it.v;
        if (it.w - c.w <= room + tol_w && gain > best_gain) best_gain = gain, bg = g, bj = j;
      }
    }
    // Pairs: for every downward move (frees f, loses d) find the best upward
    // move of another group needing at most f + room. Upward moves sorted by
    // need, with the best two (from different groups) of every prefix.
    struct Move { double need, gain; size_t g, j; };
    std::vector<Move> up, down;
    for (size_t g = 0; g < groups.size(); ++g) {
      const Item& c = groups[g].items[groups[g].cur];
      for (size_t j = 0; j < groups[g].items.size(); ++j) {
        const Item& it = groups[g].items[j];
        if (it.w > c.w) up.push_back({it.w - c.w, c.v - it.v, g, j});
        else if (it.w < c.w) down.push_back({it.w - c.w, c.v - it.v, g, j});  // need < 0, gain < 0
      }
    }
    std::sort(up.begin(), up.end(), [](const Move& a, const Move& b) { return a.need < b.need; });
    std::vector<int64_t> top1(up.size(), -1), top2(up.size(), -1);
    for (size_t i = 0; i < up.size(); ++i) {
      int64_t a = i ? top1[i - 1] : -1, b = i ? top2[i - 1] : -1;
      int64_t x = static_cast<int64_t>(i);
      // a: the best so far; b: the best from a group other than a's.
      if (a < 0 || up[i].gain > up[a].gain) {
        if (a >= 0 && up[a].g != up[i].g) b = a;
        a = x;
      } else if (up[i].g != up[a].g && (b < 0 || up[i].gain > up[b].gain)) {
        b = x;
      }
      top1[i] = a, top2[i] = b;
    }
    bool pair = false;
    size_t pd = 0, pu = 0;
    for (size_t d = 0; d < down.size(); ++d) {
      double limit = room - down[d].need + tol_w;
      auto it = std::upper_bound(up.begin(), up.end(), limit,
                                 [](double l, const Move& m) { return l < m.need; });
      if (it == up.begin()) continue;
      size_t i = static_cast<size_t>(it - up.begin()) - 1;
      int64_t u = top1[i];
      if (u >= 0 && up[u].g == down[d].g) u = top2[i];
      if (u < 0) continue;
      double gain = up[u].gain + down[d].gain;
      if (gain > best_gain) best_gain = gain, pair = true, pd = d, pu = static_cast<size_t>(u);
    }
    double scale = 1e-12 * std::max(1.0, std::fabs(total_v(groups)));
    if (best_gain <= scale) return;
    if (pair) {
      groups[down[pd].g].cur = down[pd].j;
      groups[up[pu].g].cur = up[pu].j;
    } else {
      groups[bg].cur = bj;
    }
  }
}

Solution solve(std::vector<Group>& groups, double cap, double tol_w, const AllocateOptions& opt) {
  Solution sol;
  std::vector<Segment> segs;
  for (size_t g = 0; g < groups.size(); ++g) {
    Group& gr = groups[g];
    gr.cur = 0;
    for (size_t h = 1; h < gr.hull.size(); ++h) {
      const Item &a = gr.items[gr.hull[h - 1]], &b = gr.items[gr.hull[h]];
      segs.push_back({g, gr.hull[h - 1], gr.hull[h], b.w - a.w, b.v - a.v, (a.v - b.v) / (b.w - a.w)});
    }
  }
  // Within a group gains fall along the hull, so a stable sort by gain keeps
  // each group's segments in order.
  std::stable_sort(segs.begin(), segs.end(), [](const Segment& a, const Segment& b) { return a.gain > b.gain; });
  double used = total_w(groups);
  size_t k = 0;
  for (; k < segs.size(); ++k) {
    if (used + segs[k].dw > cap + tol_w) break;
    used += segs[k].dw;
    groups[segs[k].group].cur = segs[k].to;
  }
  if (k == segs.size()) {  // the budget does not bind: every tensor at its best
    sol.objective = sol.lower_bound = total_v(groups);
    sol.proven = true;
    return sol;
  }
  double lambda = segs[k].gain;
  sol.lambda = lambda;
  // Keep filling with later segments that still fit and follow on from the
  // group's current item.
  for (size_t i = k + 1; i < segs.size(); ++i) {
    const Segment& s = segs[i];
    if (groups[s.group].cur == s.from && used + s.dw <= cap + tol_w) {
      used += s.dw;
      groups[s.group].cur = s.to;
    }
  }
  // Lagrangian bound L(lambda) = sum_g min_j (v + lambda*w) - lambda*cap.
  std::vector<double> m(groups.size());
  double bound = -lambda * cap;
  for (size_t g = 0; g < groups.size(); ++g) {
    double best = std::numeric_limits<double>::infinity();
    for (const Item& it : groups[g].items) best = std::min(best, it.v + lambda * it.w);
    m[g] = best;
    bound += best;
  }
  sol.lower_bound = bound;
  // A cheap local pass first: a better incumbent narrows the search below.
  improve(groups, cap, tol_w);
  // Reduced costs: a better solution has sum_g delta_g < value - bound, so
  // any item whose own delta reaches that gap is ruled out. Groups left with
  // more than one item are the open ones; only they can change. A small
  // search over the nearest few first (cheap, often closes the gap when ties
  // leave many groups open), then one over as many as allowed.
  size_t small = std::min<size_t>(32, opt.max_search_tensors);
  for (size_t limit : {small, opt.max_search_tensors}) {
    double value = total_v(groups);
    double tol_v = 1e-12 * std::max(1.0, std::fabs(value));
    double gap = value - bound;
    if (gap <= tol_v) {
      sol.objective = value;
      sol.proven = true;
      return sol;
    }
    if (limit == 0) continue;
    std::vector<size_t> open;
    std::vector<std::vector<size_t>> cands;
    std::vector<std::pair<double, size_t>> closeness;  // smallest delta among alternatives
    for (size_t g = 0; g < groups.size(); ++g) {
      std::vector<size_t> c;
      double second = std::numeric_limits<double>::infinity();
      for (size_t j = 0; j < groups[g].items.size(); ++j) {
        const Item& it = groups[g].items[j];
        double delta = it.v + lambda * it.w - m[g];
        if (j == groups[g].cur || delta < gap - tol_v) c.push_back(j);
        if (j != groups[g].cur) second = std::min(second, delta);
      }
      if (c.size() > 1) {
        closeness.push_back({second, open.size()});
        open.push_back(g);
        cands.push_back(std::move(c));
      }
    }
    bool complete = open.size() <= limit;
    if (!complete) {
      // Take the ones nearest to changing, but in rounds of one per current
      // item position: among ties, groups all sitting at the same item can
      // only move one way together, and a mix is what fills a budget exactly.
      std::sort(closeness.begin(), closeness.end());
      std::vector<size_t> o2;
      std::vector<std::vector<size_t>> c2;
      std::vector<char> taken(closeness.size(), 0);
      while (o2.size() < limit) {
        std::set<size_t> positions;
        for (size_t i = 0; i < closeness.size() && o2.size() < limit; ++i) {
          size_t k = closeness[i].second;
          if (taken[i] || !positions.insert(groups[open[k]].cur).second) continue;
          taken[i] = 1;
          o2.push_back(open[k]);
          c2.push_back(std::move(cands[k]));
        }
      }
      open.swap(o2);
      cands.swap(c2);
    }
    bool exact = search(groups, open, cands, cap, tol_w, lambda, opt.max_search_states, opt.max_search_work);
    if (complete && exact) {
      sol.objective = total_v(groups);
      sol.proven = true;
      return sol;
    }
    improve(groups, cap, tol_w);
  }
  sol.objective = total_v(groups);
  sol.proven = sol.objective - sol.lower_bound <= 1e-12 * std::max(1.0, std::fabs(sol.objective));
  return sol;
}

std::string describe_bytes(double b) { return fmt::format("{:.4g} MiB", b / (1024.0 * 1024.0)); }

}  // namespace

Allocation allocate(std::span<const TensorOptions> tensors, const Budget& budget, const AllocateOptions& opt) {
  if (!std::isfinite(budget.value) || budget.value < 0) fail("budget {} is not a finite non-negative number", budget.value);
  bool by_bytes = budget.kind == Budget::Kind::Bytes;
  std::vector<Usable> usable;
  std::vector<Group> groups(tensors.size());
  usable.reserve(tensors.size());
  double min_w = 0;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const TensorOptions& tensor = tensors[t];
    usable.push_back(usable_options(tensor, opt));
    std::vector<TypeOption> opts;
    for (size_t i : usable.back().options) opts.push_back(tensor.options[i]);
    // The hull's vertex set is the same whichever axis is the budget; only
    // the order flips.
    std::vector<size_t> hull = lower_hull(opts);
    std::vector<char> on_hull(opts.size(), 0);
    for (size_t h : hull) on_hull[h] = 1;
    // Efficient frontier, in rising w.
    std::vector<size_t> order(opts.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    auto w_of = [&](size_t i) { return by_bytes ? static_cast<double>(opts[i].bytes) : opts[i].cost; };
    auto v_of = [&](size_t i) { return by_bytes ? opts[i].cost : static_cast<double>(opts[i].bytes); };
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return w_of(a) != w_of(b) ? w_of(a) < w_of(b) : v_of(a) < v_of(b);
    });
    Group& g = groups[t];
    for (size_t i : order) {
      if (!g.items.empty() && v_of(i) >= g.items.back().v) continue;
      if (on_hull[i]) g.hull.push_back(g.items.size());
      g.items.push_back({w_of(i), v_of(i), usable.back().options[i]});
    }
    min_w += g.items.front().w;
  }
  double cap = budget.value;
  double tol_w = by_bytes ? 0.0 : 1e-12 * std::max(1.0, std::fabs(cap));
  if (min_w > cap + tol_w) {
    if (by_bytes)
      fail("size budget {} bytes ({}) is infeasible: the smallest allowed types need {} bytes ({})",
           static_cast<int64_t>(cap), describe_bytes(cap), static_cast<int64_t>(min_w), describe_bytes(min_w));
    fail("cost budget {:.6g} is infeasible: the best reachable total predicted cost is {:.6g}", cap, min_w);
  }
  Solution sol = solve(groups, cap, tol_w, opt);

  Allocation a;
  a.lambda = sol.lambda;
  a.lower_bound = sol.lower_bound;
  a.proven_optimal = sol.proven;
  double var = 0;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const Group& g = groups[t];
    const TypeOption& o = tensors[t].options[g.items[g.cur].option];
    Choice c;
    c.option = g.items[g.cur].option;
    c.type = o.type;
    c.bytes = o.bytes;
    c.cost = o.cost;
    c.cost_error = o.cost_error;
    c.pinned = usable[t].pinned;
    std::string rules = usable[t].why.empty() ? "" : "; rules " + usable[t].why;
    if (c.pinned) {
      c.reason = "pinned by " + usable[t].why;
    } else if (g.items.size() == 1) {
      c.reason = "the only usable type" + rules;
    } else if (by_bytes && g.cur + 1 < g.items.size()) {
      const TypeOption& up = tensors[t].options[g.items[g.cur + 1].option];
      c.reason = fmt::format("size budget: {} would add {} bytes for {:.3g} less cost", type_name(up.type),
                             up.bytes - o.bytes, o.cost - up.cost) + rules;
    } else if (!by_bytes && g.cur > 0) {
      const TypeOption& down = tensors[t].options[g.items[g.cur - 1].option];
      c.reason = fmt::format("cost budget: {} would save {} bytes for {:.3g} more cost", type_name(down.type),
                             o.bytes - down.bytes, down.cost - o.cost) + rules;
    } else {
      c.reason = (by_bytes ? "lowest-cost usable type" : "smallest usable type") + rules;
    }
    a.total_bytes += o.bytes;
    a.total_cost += o.cost;
    var += o.cost_error * o.cost_error;
    a.choices.push_back(std::move(c));
  }
  a.total_cost_error = std::sqrt(var);
  for (const Rule& r : opt.rules)
    if (std::none_of(tensors.begin(), tensors.end(), [&](const TensorOptions& t) { return r.matches(t.name); }))
      a.unmatched_rules.push_back(r.text);
  a.objective = sol.objective;
  a.gap = std::max(0.0, sol.objective - sol.lower_bound);
  return a;
}

}  // namespace tailor::plan
