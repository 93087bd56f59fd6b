#include "write_report.h"

#include <cstdio>

#include <unistd.h>

namespace tailor::cli {

std::function<void(const ConvertedTensor&, size_t, size_t)> tensor_progress(bool wanted) {
  if (!wanted || !isatty(fileno(stderr))) return {};
  return [](const ConvertedTensor& ct, size_t i, size_t total) {
    std::fprintf(stderr, "\r[%3zu/%3zu] %-32s %-7s%s\x1b[K", i + 1, total, ct.name.c_str(),
                 std::string(type_name(ct.type)).c_str(), ct.fell_back ? " (fallback)" : "");
    if (i + 1 == total) std::fputc('\n', stderr);
  };
}

void warn_missing_importance(const std::vector<std::string>& names, const std::string& imatrix_path) {
  for (const std::string& n : names)
    std::fprintf(stderr, "tailor: warning: %s has no importance values in %s; quantized unweighted\n", n.c_str(),
                 imatrix_path.c_str());
}

nlohmann::json tensors_json(const std::vector<ConvertedTensor>& tensors) {
  nlohmann::json ts = nlohmann::json::array();
  for (const ConvertedTensor& ct : tensors)
    ts.push_back({{"name", ct.name}, {"ne", ct.ne}, {"type", std::string(type_name(ct.type))},
                  {"bytes", ct.nbytes}, {"fallback", ct.fell_back}, {"imatrix", ct.weighted}});
  return ts;
}

}  // namespace tailor::cli
