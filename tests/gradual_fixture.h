// A "gradual" job written straight into a job store with the JobStore API, in
// the unit layout the gradual job commits (importance, block.N in processing
// order, validate), for the tests of what `tailor serve` shows of it
// (tests/test_server.cpp and, through tests/gradual_fixture.cpp, the browser
// test web/tests/ui.mjs). The numbers are made up but vary per block and per
// method, so a view that mixes up blocks, methods or columns shows it; the
// returned JSON is exactly what was committed, for the tests to compare with.
#pragma once
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tailor/jobs/job_store.h"

namespace tailor::test {

struct GradualFixture {
  int64_t id = 0;
  nlohmann::json importance, blocks = nlohmann::json::array(), validate;  // blocks in processing order
  std::vector<std::string> pending;                                        // unit keys left undone
};

// `blocks_done` < n_blocks leaves the later blocks and the validation pending
// (a job still running); -1: everything done.
inline GradualFixture write_gradual_fixture(jobs::JobStore& st, const std::string& model_path, int n_blocks = 8,
                                            int blocks_done = -1, const std::string& tag = "fixture") {
  using nlohmann::json;
  const char* kinds[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  const json weights = {{"rtn", 0.4}, {"upgrade", 0.25}, {"disable", 0.2}, {"noise", 0.15}};
  const double safety = 2.0;
  auto method = [](int b, int k) { return 0.1 + 0.8 * (0.5 + 0.5 * std::sin(1.3 * b + 2.1 * k + 0.4)); };

  json blocks = json::array(), layers = json::array();
  std::vector<std::pair<double, int>> by_score;
  for (int b = 0; b < n_blocks; ++b) {
    json blk = {{"block", b}, {"noise", method(b, 0)}, {"rtn", method(b, 1)}, {"disable", method(b, 2)},
                {"upgrade", method(b, 3)}};
    double combined = 0;
    for (const auto& [m, w] : weights.items()) combined += w.get<double>() * blk[m].get<double>();
    blk["combined"] = combined;
    blk["gain"] = 1.0 / (0.2 + combined);
    blk["threshold"] = safety * 0.004 * blk["gain"].get<double>();
    blk["rtn_kld"] = {{"8", 1e-4 * (1 + b)}, {"4", 3e-3 * (1 + 0.5 * b)}, {"2", 0.08 * (1 + 0.3 * b)}};
    blocks.push_back(blk);
    by_score.push_back({combined, b});
    for (int k = 0; k < 7; ++k) {
      json l = {{"name", "blk." + std::to_string(b) + "." + kinds[k] + ".weight"}, {"block", b}};
      for (const char* m : {"noise", "rtn", "disable", "upgrade"}) l[m] = method(b + 3 * k, k + 1) * (m[0] == 'r' ? 1.5 : 1);
      double c = 0;
      for (const auto& [m, w] : weights.items()) c += w.get<double>() * l[m].get<double>();
      l["combined"] = c;
      layers.push_back(l);
    }
  }
  std::sort(by_score.begin(), by_score.end());  // least important first: processed first
  GradualFixture f;
  f.importance = {{"blocks", blocks}, {"layers", layers}, {"weights", weights}, {"safety", safety}};

  int64_t total_bytes = 0;
  for (int k = 0; k < n_blocks; ++k) {
    const int b = by_score[size_t(k)].second;
    const json& imp = blocks[size_t(b)];
    const double threshold = imp["threshold"].get<double>();
    const bool low = k < n_blocks / 2;  // the less important half goes to 2 bits
    json types = json::object();
    for (int i = 0; i < 7; ++i)
      types["blk." + std::to_string(b) + "." + kinds[i] + ".weight"] =
          low ? (i == 6 ? "Q4_K" : (i % 2 ? "IQ2_XS" : "Q2_K")) : (i == 6 ? "Q8_0" : "Q4_K");
    const double plain = threshold * (1.2 + 0.35 * k);
    const double error = threshold * (0.55 + 0.05 * k);
    const bool trained = k % 3 != 2;
    const int64_t bytes = (low ? 1'200'000 : 2'100'000) + 10'000 * b;
    total_bytes += bytes;
    json attempts = json::array();
    if (low) {
      attempts.push_back({{"type", "IQ2_XXS"}, {"plain_error", plain * 2}, {"trained_error", threshold * 1.4}, {"ok", false}});
      attempts.push_back({{"type", "Q2_K"}, {"plain_error", plain}, {"trained_error", error}, {"ok", true}});
    } else {
      attempts.push_back({{"type", "IQ4_XS"}, {"plain_error", plain}, {"trained_error", error}, {"ok", true}});
    }
    f.blocks.push_back({{"block", b},
                        {"order", k},
                        {"types", types},
                        {"error", error},
                        {"threshold", threshold},
                        {"plain_error", plain},
                        {"trained", trained},
                        {"recovered", trained && low ? json::array({"blk." + std::to_string(b) + ".ffn_down.weight"}) : json::array()},
                        {"bits", low ? 2 : 4},
                        {"bytes", bytes},
                        {"seconds", 3.5 + 1.25 * k},
                        {"train_steps", trained ? 200 + 25 * k : 0},
                        {"adaptive", {{"predicted", 150.0 + 30 * k}, {"actual", 140.0 + 33 * k}, {"stopped_early", k == 1}}},
                        {"attempts", attempts}});
  }
  f.validate = {{"kld", 0.0123},
                {"ppl_base", 21.5},
                {"ppl", 22.75},
                {"ppl_increase", 22.75 / 21.5 - 1},
                {"bytes", total_bytes + 4'500'000},
                {"bpw", 3.25},
                {"target_bytes", total_bytes + 5'000'000},
                {"upgrades", json::array({"output.weight"})},
                {"output", "/tmp/" + tag + "-gradual.gguf"}};

  jobs::JobSpec spec;
  spec.kind = "gradual";
  spec.model.path = model_path;
  spec.settings = {{"fixture", tag}, {"blocks", n_blocks}};
  std::vector<std::pair<std::string, json>> units = {{"importance", f.importance}};
  for (const auto& b : f.blocks) units.push_back({"block." + std::to_string(b["block"].get<int>()), b});
  units.push_back({"validate", f.validate});
  for (const auto& u : units) spec.units.push_back(u.first);
  f.id = st.create_job(spec);
  st.begin_work(f.id);
  const size_t done = blocks_done < 0 ? units.size() : size_t(1 + blocks_done);
  for (size_t i = 0; i < units.size(); ++i) {
    if (i >= done) {
      f.pending.push_back(units[i].first);
      continue;
    }
    const auto u = st.claim_next(f.id);
    if (!u || u->key != units[i].first) throw std::runtime_error("gradual fixture: units claimed out of order");
    st.commit_result(u->id, units[i].second);
  }
  if (blocks_done >= 0) f.blocks.erase(f.blocks.begin() + std::min<int>(blocks_done, n_blocks), f.blocks.end());
  return f;
}

}  // namespace tailor::test
