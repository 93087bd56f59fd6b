// tailor pull ORG/NAME[@REVISION]: download a model's config, weights and
// tokenizer from the Hugging Face Hub into huggingface_hub's cache and print
// the snapshot folder, which every model-taking command accepts.
#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "tailor/hub/hub.h"

namespace tailor::cli {

void register_pull(CLI::App& app) {
  struct Options {
    std::string spec;
    hub::PullOptions pull;
    bool json = false, quiet = false;
  };
  auto opt = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "pull", "Download a model (config, *.safetensors, tokenizer) from the Hugging Face Hub into its cache");
  cmd->add_option("model", opt->spec, "ORG/NAME[@REVISION] (branch, tag or commit; default main)")->required();
  cmd->add_option("--token", opt->pull.token, "Access token (default: $HF_TOKEN, else huggingface_hub's token file)");
  cmd->add_option("--endpoint", opt->pull.endpoint, "Hub URL, for mirrors (default: $HF_ENDPOINT, else https://huggingface.co)");
  cmd->add_option("--cache", opt->pull.cache_dir, "Cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)");
  cmd->add_option("--parallel", opt->pull.parallel, "Files downloaded at once")->capture_default_str();
  cmd->add_flag("--json", opt->json, "Print the result (snapshot folder, files) as JSON");
  cmd->add_flag("--quiet", opt->quiet, "No progress line");
  cmd->callback([opt] {
    opt->pull.quiet = opt->quiet;
    const hub::PullResult r = hub::pull(hub::parse_repo_spec(opt->spec), opt->pull);
    if (opt->json) {
      std::printf("%s\n", r.to_json().dump(2).c_str());
      return;
    }
    int fetched = 0;
    for (const auto& f : r.files) fetched += f.downloaded;
    std::fprintf(stderr, "%s@%s: commit %s, %zu files (%d downloaded, %.1f MiB)%s\n", r.repo.c_str(),
                 r.revision.c_str(), r.commit.c_str(), r.files.size(), fetched, r.bytes_downloaded / 1048576.0,
                 r.offline ? ", offline from the cache" : "");
    std::printf("%s\n", r.snapshot.c_str());
  });
}

}  // namespace tailor::cli
