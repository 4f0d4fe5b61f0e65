// ActivationSet: the tensors one chunk saved for one microbatch between its forward and its
// backward/weight-gradient passes, by name (STYLE.md item 5: offload refers to fields by name,
// never by position). Owned by the executor, one per (chunk, microbatch); the model writes and
// reads fields; the offloader moves them to host and back. bytes() is exact: the sum of the
// storage bytes of the tensors it holds.
//
// Thread-safety: none; used by the rank's executor thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

namespace stp::engine {

class ActivationSet {
 public:
  ActivationSet() = default;
  ActivationSet(int chunk, int mb) : chunk_(chunk), mb_(mb) {}

  int chunk() const { return chunk_; }
  int mb() const { return mb_; }
  // Note [Recompute] (schedule/program.h): set by the executor before a forward whose F part
  // has recompute; the chunk's forward then keeps only each unit's input and its backward
  // re-runs each forward unit before the matching B unit.
  bool recompute() const { return recompute_; }
  void set_recompute(bool on) { recompute_ = on; }

  // Saves (or replaces) a field.
  void put(const std::string& name, at::Tensor t) { fields_[name] = std::move(t); }
  // REQUIRES: the field exists. Throws std::logic_error naming the field otherwise.
  const at::Tensor& get(const std::string& name) const;
  bool has(const std::string& name) const { return fields_.count(name) != 0; }
  void erase(const std::string& name) { fields_.erase(name); }
  void clear() { fields_.clear(); }
  bool empty() const { return fields_.empty(); }

  // Sum of nbytes() over the fields (views are counted by their own size).
  std::int64_t bytes() const;

  std::map<std::string, at::Tensor>& fields() { return fields_; }
  const std::map<std::string, at::Tensor>& fields() const { return fields_; }

 private:
  int chunk_ = 0;
  int mb_ = 0;
  bool recompute_ = false;
  std::map<std::string, at::Tensor> fields_;
};

}  // namespace stp::engine
