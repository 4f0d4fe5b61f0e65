// Safetensors: the tensor file format of Hugging Face's `safetensors` package, written and read
// here so checkpoints open in Python (`safetensors.numpy.load_file`, `safetensors.torch...`).
//
// Layout: 8 bytes little-endian u64 N, then N bytes of JSON header
//   {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string value>"}}
// padded with spaces to a multiple of 8, then the data: each tensor's raw little-endian bytes at
// [begin, end) relative to the end of the header. We write tensors ordered by element size
// (largest first) then name, so every tensor is aligned to its element size.
//
// The reader trusts nothing (the same rules as the Python package, which refuses what we
// refuse): header length within [2, 100 MB] and within the file, valid UTF-8 JSON object, every
// entry with a known dtype, a shape of non-negative integers, offsets that lie inside the data,
// cover it exactly with no gap or overlap, and span exactly shape x element-size bytes; metadata
// values are strings. Each violation throws std::invalid_argument with the file and the problem.
//
// Thread-safety: free functions; concurrent calls on different files are fine.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace stp::data {
class MappedFile;
}

namespace stp::checkpoint {

using TensorMap = std::map<std::string, at::Tensor>;
using StringMap = std::map<std::string, std::string>;

struct SafetensorsContents {
  TensorMap tensors;   // CPU, contiguous, dtype and shape as stored
  StringMap metadata;  // "__metadata__", empty when absent
};

struct FileDigest {
  std::int64_t bytes = 0;   // file size
  std::uint64_t xxh64 = 0;  // XXH64 (seed 0) of the whole file
};

// Writes `tensors` to `path` (created or truncated), then fsyncs it. Returns the file's size and
// checksum, computed from the bytes as written. REQUIRES: every tensor defined, on the CPU,
// contiguous, of a dtype listed in safetensors.cpp (F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32
// I16 I8 U8 BOOL); names non-empty and not "__metadata__". Throws std::invalid_argument naming
// the tensor otherwise, std::runtime_error when the file system fails.
FileDigest write_safetensors(const std::string& path, const TensorMap& tensors,
                             const StringMap& metadata = {});

// Reads and validates `path` (see the contract above).
SafetensorsContents read_safetensors(const std::string& path);

// One tensor of a safetensors header: its bytes lie at file offset data_start + [begin, end).
struct SafetensorsEntry {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;
};
struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by offset; they cover the data exactly
  StringMap metadata;
  std::uint64_t data_start = 0;  // file offset of the data section (8 + header length)
};
// Reads and validates only the header of `path` (the same checks as read_safetensors, which
// never needs the data to fail), for readers that map the file rather than copy it.
SafetensorsHeader read_safetensors_header(const std::string& path);
// The tensor `entry` of a safetensors file mapped as `file` (data_start from its header): a
// zero-copy view that keeps the mapping alive. The mapping is read-only: only read through it.
at::Tensor mapped_tensor(const std::shared_ptr<const data::MappedFile>& file,
                         std::uint64_t data_start, const SafetensorsEntry& entry);

// "F32" for at::kFloat etc.; throws std::invalid_argument for a dtype safetensors cannot hold.
std::string safetensors_dtype(at::ScalarType type);

// XXH64 (xxHash, 64-bit, by Yann Collet): the checkpoint checksum. Streaming, so files of any
// size are hashed in bounded memory; xxh64(data, n, seed) is the one-shot form.
class Xxh64 {
 public:
  explicit Xxh64(std::uint64_t seed = 0);
  void update(const void* data, std::size_t n);
  std::uint64_t digest() const;

 private:
  std::uint64_t v_[4];
  std::uint64_t seed_;
  std::uint64_t total_ = 0;
  unsigned char buf_[32];
  std::size_t buf_len_ = 0;
};
std::uint64_t xxh64(const void* data, std::size_t n, std::uint64_t seed = 0);

// Size and XXH64 of a file on disk, read in 1 MiB blocks. Throws std::invalid_argument if it
// cannot be read.
FileDigest digest_file(const std::string& path);

}  // namespace stp::checkpoint
