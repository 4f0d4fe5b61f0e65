#include "checkpoint/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <vector>

#include "common/check.h"
#include "data/mapped_file.h"

namespace stp::checkpoint {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swaps");

namespace {

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // the Python package's limit
constexpr std::size_t kIoBlock = std::size_t{1} << 20;  // digest_file read size

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
};
// Element sizes come from at::elementSize.
const DtypeInfo kDtypes[] = {
    {"F64", at::kDouble},
    {"F32", at::kFloat},
    {"F16", at::kHalf},
    {"BF16", at::kBFloat16},
    {"F8_E4M3", at::kFloat8_e4m3fn},
    {"F8_E5M2", at::kFloat8_e5m2},
    {"I64", at::kLong},
    {"I32", at::kInt},
    {"I16", at::kShort},
    {"I8", at::kChar},
    {"U8", at::kByte},
    {"BOOL", at::kBool},
};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const DtypeInfo& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

// Closes the descriptor on scope exit (never throws).
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::runtime_error(str_cat(what, ": ", std::strerror(errno)));
}

void write_all(int fd, const void* data, std::size_t n, const std::string& path, Xxh64& hash) {
  hash.update(data, n);
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min(n, std::size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw_errno("writing " + path);
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

// Reads exactly n bytes at `offset`; false on a short read (file shorter than promised).
bool read_at(int fd, void* data, std::size_t n, std::uint64_t offset, const std::string& path) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, std::min(n, std::size_t{1} << 30), static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_errno("reading " + path);
    }
    if (r == 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
    offset += static_cast<std::uint64_t>(r);
  }
  return true;
}

std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Parses and validates one header entry (everything that does not need the other entries).
SafetensorsEntry parse_entry(const std::string& path, const std::string& name,
                             const nlohmann::json& v, std::uint64_t data_bytes) {
  const std::string where = str_cat(path, ": tensor '", name, "'");
  STP_CHECK(v.is_object(), where, " header entry is not a JSON object");
  STP_CHECK(v.contains("dtype") && v["dtype"].is_string(), where, " has no dtype string");
  const std::string dt = v["dtype"].get<std::string>();
  const DtypeInfo* info = find_dtype(dt);
  STP_CHECK(info != nullptr, where, " has unknown dtype '", dt, "'");
  STP_CHECK(v.contains("shape") && v["shape"].is_array(), where, " has no shape array");
  SafetensorsEntry e{name, info->type, {}, 0, 0};
  std::uint64_t numel = 1;
  for (const nlohmann::json& d : v["shape"]) {
    STP_CHECK(d.is_number_unsigned(), where, " shape ", v["shape"].dump(),
              " must hold non-negative integers");
    const std::uint64_t n = d.get<std::uint64_t>();
    STP_CHECK(n <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) &&
                  (n == 0 || numel <= std::numeric_limits<std::uint64_t>::max() / n),
              where, " shape ", v["shape"].dump(), " overflows");
    numel *= n;
    e.shape.push_back(static_cast<std::int64_t>(n));
  }
  const nlohmann::json& off = v.value("data_offsets", nlohmann::json());
  STP_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
                off[1].is_number_unsigned(),
            where, " data_offsets ", off.dump(), " must be [begin, end] of non-negative integers");
  e.begin = off[0].get<std::uint64_t>();
  e.end = off[1].get<std::uint64_t>();
  STP_CHECK(e.begin <= e.end, where, " data_offsets [", e.begin, ", ", e.end, "] end before begin");
  STP_CHECK(e.end <= data_bytes, where, " data_offsets [", e.begin, ", ", e.end,
            "] beyond the data section of ", data_bytes, " bytes (file truncated?)");
  const auto elem = static_cast<std::uint64_t>(at::elementSize(info->type));
  STP_CHECK(
      numel <= std::numeric_limits<std::uint64_t>::max() / elem && numel * elem == e.end - e.begin,
      where, " shape ", shape_str(e.shape), " ", dt, " needs ", numel * elem,
      " bytes but data_offsets span ", e.end - e.begin);
  return e;
}

}  // namespace

std::string safetensors_dtype(at::ScalarType type) {
  for (const DtypeInfo& d : kDtypes)
    if (d.type == type) return d.name;
  STP_CHECK(false, "dtype ", type, " cannot be stored in safetensors (supported: F64 F32 F16 ",
            "BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 U8 BOOL)");
  return "";
}

FileDigest write_safetensors(const std::string& path, const TensorMap& tensors,
                             const StringMap& metadata) {
  // Order: larger elements first, then by name, so each tensor starts aligned to its element.
  std::vector<const TensorMap::value_type*> order;
  for (const auto& kv : tensors) {
    const std::string& name = kv.first;
    const at::Tensor& t = kv.second;
    STP_CHECK(!name.empty() && name != "__metadata__", "safetensors tensor name '", name,
              "' is reserved or empty");
    STP_CHECK(t.defined(), "tensor '", name, "' is undefined");
    STP_CHECK(t.device().is_cpu(), "tensor '", name, "' is on ", t.device(),
              "; copy it to the CPU before saving");
    STP_CHECK(t.is_contiguous(), "tensor '", name, "' is not contiguous; call .contiguous()");
    safetensors_dtype(t.scalar_type());  // throws for an unsupported dtype
    order.push_back(&kv);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return a->second.element_size() > b->second.element_size();
  });

  nlohmann::json header = nlohmann::json::object();
  std::uint64_t offset = 0;
  for (const auto* kv : order) {
    const at::Tensor& t = kv->second;
    const auto bytes = static_cast<std::uint64_t>(t.nbytes());
    header[kv->first] = {{"dtype", safetensors_dtype(t.scalar_type())},
                         {"shape", t.sizes().vec()},
                         {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    STP_CHECK(false, "safetensors header for ", path, " cannot be encoded: ", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(text.size() >> (8 * i));

  Fd f{::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
  if (f.fd < 0) throw_errno("creating " + path);
  Xxh64 hash;
  write_all(f.fd, len, sizeof len, path, hash);
  write_all(f.fd, text.data(), text.size(), path, hash);
  for (const auto* kv : order) {
    write_all(f.fd, kv->second.data_ptr(), kv->second.nbytes(), path, hash);
  }
  if (::fsync(f.fd) != 0) throw_errno("fsync " + path);
  return {static_cast<std::int64_t>(sizeof len + text.size() + offset), hash.digest()};
}

namespace {

// The validated header of `path`, open as `fd`, of `file_bytes` bytes.
SafetensorsHeader parse_header(const std::string& path, int fd, std::uint64_t file_bytes) {
  STP_CHECK(file_bytes >= 8, path, ": ", file_bytes,
            " bytes is too short for a safetensors file (needs an 8-byte header length)");
  unsigned char len[8];
  STP_CHECK(read_at(fd, len, 8, 0, path), path, ": short read of the header length");
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(len[i]) << (8 * i);
  STP_CHECK(n >= 2 && n <= kMaxHeaderBytes, path, ": header length ", n, " must be in [2, ",
            kMaxHeaderBytes, "] (not a safetensors file, or corrupt)");
  STP_CHECK(n <= file_bytes - 8, path, ": header length ", n, " exceeds the ", file_bytes - 8,
            " bytes after it (file truncated or corrupt)");
  std::string text(n, '\0');
  STP_CHECK(read_at(fd, text.data(), n, 8, path), path, ": short read of the header");
  STP_CHECK(text[0] == '{', path, ": header does not start with '{' (not a safetensors file)");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    STP_CHECK(false, path, ": header is not valid JSON: ", e.what());
  }
  STP_CHECK(header.is_object(), path, ": header is not a JSON object");

  SafetensorsHeader out;
  const std::uint64_t data_bytes = file_bytes - 8 - n;
  std::vector<SafetensorsEntry>& entries = out.entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      STP_CHECK(it.value().is_object(), path, ": __metadata__ is not a JSON object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        STP_CHECK(m.value().is_string(), path, ": __metadata__ value of '", m.key(),
                  "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(path, it.key(), it.value(), data_bytes));
  }
  // The data section must be covered exactly: sorted by offset, each entry starts where the
  // previous one ended (no overlap, no gap), and the last one ends at the end of the file.
  std::sort(entries.begin(), entries.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  std::uint64_t expect = 0;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const SafetensorsEntry& e = entries[i];
    STP_CHECK(e.begin >= expect, path, ": tensors '", entries[i - 1].name, "' and '", e.name,
              "' overlap (data_offsets [", entries[i - 1].begin, ", ", entries[i - 1].end,
              "] and [", e.begin, ", ", e.end, "])");
    STP_CHECK(e.begin == expect, path, ": gap of ", e.begin - expect, " bytes before tensor '",
              e.name, "' (data_offsets begin ", e.begin, ", previous data ends at ", expect, ")");
    expect = e.end;
  }
  STP_CHECK(expect == data_bytes, path, ": tensor data ends at byte ", expect,
            " but the data section has ", data_bytes, " bytes (",
            expect < data_bytes ? "trailing bytes" : "file truncated", ")");

  out.data_start = 8 + n;
  return out;
}

// Opens `path` for reading; `file_bytes` receives its size.
int open_for_read(const std::string& path, std::uint64_t& file_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  STP_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    STP_CHECK(false, path, ": cannot stat: ", std::strerror(err));
  }
  file_bytes = static_cast<std::uint64_t>(st.st_size);
  return fd;
}

}  // namespace

SafetensorsHeader read_safetensors_header(const std::string& path) {
  std::uint64_t file_bytes = 0;
  Fd f{open_for_read(path, file_bytes)};
  return parse_header(path, f.fd, file_bytes);
}

at::Tensor mapped_tensor(const std::shared_ptr<const data::MappedFile>& file,
                         std::uint64_t data_start, const SafetensorsEntry& entry) {
  if (entry.end == entry.begin) return at::empty(entry.shape, at::dtype(entry.dtype));
  STP_CHECK(data_start + entry.end <= static_cast<std::uint64_t>(file->size()), file->path(),
            ": tensor '", entry.name, "' lies past the end of the mapped file");
  void* p = const_cast<std::byte*>(file->data() + data_start + entry.begin);
  return at::from_blob(
      p, entry.shape, [file](void*) {}, at::TensorOptions().dtype(entry.dtype));
}

SafetensorsContents read_safetensors(const std::string& path) {
  std::uint64_t file_bytes = 0;
  Fd f{open_for_read(path, file_bytes)};
  SafetensorsHeader header = parse_header(path, f.fd, file_bytes);
  SafetensorsContents out;
  out.metadata = std::move(header.metadata);
  for (const SafetensorsEntry& e : header.entries) {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
    const std::uint64_t bytes = e.end - e.begin;
    if (bytes > 0) {
      STP_CHECK(read_at(f.fd, t.data_ptr(), bytes, header.data_start + e.begin, path), path,
                ": short read of tensor '", e.name, "' (file changed while reading?)");
    }
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

// ---- XXH64 ---------------------------------------------------------------------------------
// The reference algorithm (github.com/Cyan4973/xxHash, xxhash.h, XXH64), scalar form.

namespace {
constexpr std::uint64_t kP1 = 0x9E3779B185EBCA87ull;
constexpr std::uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr std::uint64_t kP3 = 0x165667B19E3779F9ull;
constexpr std::uint64_t kP4 = 0x85EBCA77C2B2AE63ull;
constexpr std::uint64_t kP5 = 0x27D4EB2F165667C5ull;

std::uint64_t read64(const unsigned char* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;  // little-endian host (static_assert above)
}
std::uint32_t read32(const unsigned char* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
std::uint64_t round64(std::uint64_t acc, std::uint64_t input) {
  acc += input * kP2;
  acc = std::rotl(acc, 31);
  return acc * kP1;
}
std::uint64_t merge64(std::uint64_t acc, std::uint64_t val) {
  acc ^= round64(0, val);
  return acc * kP1 + kP4;
}
}  // namespace

Xxh64::Xxh64(std::uint64_t seed)
    : v_{seed + kP1 + kP2, seed + kP2, seed, seed - kP1}, seed_(seed) {}

void Xxh64::update(const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += n;
  if (buf_len_ + n < 32) {
    if (n) std::memcpy(buf_ + buf_len_, p, n);
    buf_len_ += n;
    return;
  }
  if (buf_len_ > 0) {
    const std::size_t fill = 32 - buf_len_;
    std::memcpy(buf_ + buf_len_, p, fill);
    for (int i = 0; i < 4; ++i) v_[i] = round64(v_[i], read64(buf_ + 8 * i));
    p += fill;
    n -= fill;
    buf_len_ = 0;
  }
  for (; n >= 32; p += 32, n -= 32) {
    for (int i = 0; i < 4; ++i) v_[i] = round64(v_[i], read64(p + 8 * i));
  }
  if (n) std::memcpy(buf_, p, n);
  buf_len_ = n;
}

std::uint64_t Xxh64::digest() const {
  std::uint64_t h;
  if (total_ >= 32) {
    h = std::rotl(v_[0], 1) + std::rotl(v_[1], 7) + std::rotl(v_[2], 12) + std::rotl(v_[3], 18);
    for (int i = 0; i < 4; ++i) h = merge64(h, v_[i]);
  } else {
    h = seed_ + kP5;
  }
  h += total_;
  const unsigned char* p = buf_;
  const unsigned char* end = buf_ + buf_len_;
  for (; p + 8 <= end; p += 8) {
    h ^= round64(0, read64(p));
    h = std::rotl(h, 27) * kP1 + kP4;
  }
  if (p + 4 <= end) {
    h ^= static_cast<std::uint64_t>(read32(p)) * kP1;
    h = std::rotl(h, 23) * kP2 + kP3;
    p += 4;
  }
  for (; p < end; ++p) {
    h ^= static_cast<std::uint64_t>(*p) * kP5;
    h = std::rotl(h, 11) * kP1;
  }
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

std::uint64_t xxh64(const void* data, std::size_t n, std::uint64_t seed) {
  Xxh64 h(seed);
  h.update(data, n);
  return h.digest();
}

FileDigest digest_file(const std::string& path) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  STP_CHECK(f.fd >= 0, path, ": cannot open: ", std::strerror(errno));
  std::vector<unsigned char> buf(kIoBlock);
  Xxh64 hash;
  FileDigest d;
  for (;;) {
    const ssize_t r = ::read(f.fd, buf.data(), buf.size());
    if (r < 0 && errno == EINTR) continue;
    STP_CHECK(r >= 0, path, ": read failed: ", std::strerror(errno));
    if (r == 0) break;
    hash.update(buf.data(), static_cast<std::size_t>(r));
    d.bytes += r;
  }
  d.xxh64 = hash.digest();
  return d;
}

}  // namespace stp::checkpoint
