// A description of a model file or folder for `tailor inspect`: format,
// architecture, hyperparameters, every tensor with its type and size, totals,
// and (for GGUF) all metadata. Built as JSON so the CLI can print it as a table
// or emit it unchanged with --json.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace tailor {

// `path`: a Hugging Face folder (config.json + safetensors), a .safetensors
// file, a model.safetensors.index.json, or a .gguf file.
// Arrays in GGUF metadata longer than `max_array_items` are abbreviated.
nlohmann::json inspect_model(const std::string& path, size_t max_array_items = 16);

// Human-readable rendering of inspect_model's result.
std::string format_inspection(const nlohmann::json& report);

}  // namespace tailor
