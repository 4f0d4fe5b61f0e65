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
#include <vector>

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
  // Note [Partial sets]: with recompute, the leading share of the chunk's layers re-run, in
  // (0, 1]; the chunk recomputes the first ceil(share * L) of its L layers.
  double recompute_share() const { return recompute_share_; }
  void set_recompute(bool on, double share = 1) {
    recompute_ = on;
    recompute_share_ = share;
  }

  // Saves (or replaces) a field. A new name goes to the end of saved_order().
  void put(const std::string& name, at::Tensor t);
  // REQUIRES: the field exists. Throws std::logic_error naming the field otherwise.
  const at::Tensor& get(const std::string& name) const;
  bool has(const std::string& name) const { return fields_.count(name) != 0; }
  void erase(const std::string& name);
  void clear() {
    fields_.clear();
    order_.clear();
  }
  bool empty() const { return fields_.empty(); }

  // Sum of nbytes() over the fields (views are counted by their own size).
  std::int64_t bytes() const;

  // Note [Partial sets]: the field names in the order they were first put (a forward saves its
  // units' fields in unit order, so the backward reads the first ones last). Names put straight
  // into fields() are not in it; an offload moves those last.
  const std::vector<std::string>& saved_order() const { return order_; }

  // What an offload of `share` of the set moves (Note [Partial sets]): whole fields, first
  // those of saved_order(), then any other field by name, until `bytes` reaches share * bytes();
  // undefined and empty fields are skipped. share >= 1 moves every field that holds bytes.
  // REQUIRES: share in (0, 1] (std::invalid_argument naming it otherwise).
  struct Selection {
    std::vector<std::string> fields;  // in the order they move
    std::int64_t bytes = 0;           // their bytes
  };
  Selection select_leading(double share) const;

  std::map<std::string, at::Tensor>& fields() { return fields_; }
  const std::map<std::string, at::Tensor>& fields() const { return fields_; }

 private:
  int chunk_ = 0;
  int mb_ = 0;
  bool recompute_ = false;
  double recompute_share_ = 1;
  std::map<std::string, at::Tensor> fields_;
  std::vector<std::string> order_;
};

}  // namespace stp::engine
