// Digests for blob names and download verification (OpenSSL's EVP).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <vector>

#include <openssl/evp.h>

#include "tailor/hub/hub.h"
#include "tailor/util/error.h"

namespace tailor::hub {
namespace {

struct Digest {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx{EVP_MD_CTX_new(), &EVP_MD_CTX_free};
  explicit Digest(const EVP_MD* md) {
    if (!ctx || EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1) fail("hub: cannot start a digest");
  }
  void add(const void* p, size_t n) { EVP_DigestUpdate(ctx.get(), p, n); }
  std::string hex() {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx.get(), out, &len);
    static const char* digits = "0123456789abcdef";
    std::string s;
    for (unsigned i = 0; i < len; ++i) {
      s += digits[out[i] >> 4];
      s += digits[out[i] & 15];
    }
    return s;
  }
};

void add_file(Digest& d, const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open to verify", path);
  std::vector<char> buf(1 << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      ::close(fd);
      fail("{}: read error while verifying", path);
    }
    if (n == 0) break;
    d.add(buf.data(), size_t(n));
  }
  ::close(fd);
}

}  // namespace

std::string sha256_hex(const void* data, size_t n) {
  Digest d(EVP_sha256());
  d.add(data, n);
  return d.hex();
}

std::string sha256_file_hex(const std::string& path) {
  Digest d(EVP_sha256());
  add_file(d, path);
  return d.hex();
}

std::string git_blob_sha1_file_hex(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("{}: cannot stat to verify", path);
  Digest d(EVP_sha1());
  const std::string header = "blob " + std::to_string(st.st_size);
  d.add(header.c_str(), header.size() + 1);  // git's header ends with a NUL
  add_file(d, path);
  return d.hex();
}

}  // namespace tailor::hub
