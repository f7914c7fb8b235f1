// Saves and reloads a tensor through the installed library: proves that
// find_package(lorakeep) gives a working include path and link line.
#include <cstdio>

#include <ATen/ATen.h>
#include <lorakeep/lorakeep.h>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string path = std::string(argv[1]) + "/consumer.safetensors";
  const at::Tensor w = at::arange(6, at::kFloat).reshape({2, 3});
  lorakeep::save_safetensors(path, {{"w", w}}, {{"format", "pt"}});
  const auto file = lorakeep::SafetensorsFile::open(path);
  if (!at::equal(file.tensor("w"), w)) return 1;
  std::printf("consumer ok: lorakeep %s\n", LORAKEEP_VERSION);
  return 0;
}
