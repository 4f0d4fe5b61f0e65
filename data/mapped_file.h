// MappedFile: a whole file mapped read-only into memory (mmap), so a multi-GB token shard is
// read page by page as windows are served and never copied into the heap. The pages belong to
// the kernel's page cache: ranks of one host that map the same shard share them.
//
// Ownership: the object owns the mapping and unmaps it when destroyed; moving it moves the
// ownership and keeps data() unchanged. The file must not be truncated or rewritten while it
// is mapped (a read past a truncated end raises SIGBUS).
//
// Thread-safety: immutable after construction; any thread may read data() concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace stp::data {

class MappedFile {
 public:
  // Maps `path` (a regular file; an empty file maps to data() == nullptr, size() == 0).
  // Throws std::invalid_argument naming the path and the system's reason when it cannot be
  // opened, is not a regular file, or cannot be mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  std::int64_t size() const { return size_; }  // bytes
  const std::string& path() const { return path_; }

  // Access-pattern hints for the kernel's read-ahead (madvise); failures are ignored.
  void advise_sequential() const;  // one pass front to back (the validation scan)
  void advise_random() const;      // windows at shuffled offsets (training)

 private:
  void release() noexcept;

  std::string path_;
  const std::byte* data_ = nullptr;
  std::int64_t size_ = 0;
};

}  // namespace stp::data
