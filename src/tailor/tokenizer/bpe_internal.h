// Internal: everything the byte-level BPE tokenizer needs, whichever file it came from.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tailor/tokenizer/tokenizer.h"

namespace tailor::tokdetail {

struct BpeSpec {
  std::vector<std::string> tokens;  // byte-level spelling; control/user-defined: raw text
  std::vector<int32_t> types;
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  std::vector<std::string> regexes;  // applied in order, each an "Isolated" split
  bool ignore_merges = false;        // a word that is a token is taken whole
  bool nfc = false;
  bool add_prefix_space = false;
  SpecialTokens special;
  std::vector<std::pair<bool, bool>> strip;  // (lstrip, rstrip) per id, or empty
};

std::unique_ptr<Tokenizer> make_bpe_from_spec(BpeSpec spec, std::string name);

}  // namespace tailor::tokdetail
