// CopyEngine factory and the host backend (worker threads). The CUDA backend is in
// cuda_copy_engine.cpp.
#include "offload/copy_engine.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "common/check.h"

namespace stp::offload {

const char* to_string(Direction dir) { return dir == Direction::kD2H ? "D2H" : "H2D"; }

std::unique_ptr<CopyEngine> make_cuda_copy_engine(const CopyEngineOptions& options,
                                                  DeviceOps ops);  // cuda_copy_engine.cpp

namespace {

constexpr std::size_t kPieceAlign = 4096;    // bytes; pieces start on page multiples of a region
constexpr std::size_t kPiecesPerWorker = 4;  // load balance between workers

// Worker threads copy pieces of batches; see copy_engine.h.
class HostCopyEngine final : public CopyEngine {
 public:
  explicit HostCopyEngine(const CopyEngineOptions& options) : options_(options) {
    workers_.reserve(options.threads);
    for (int i = 0; i < options.threads; ++i) workers_.emplace_back([this] { worker_main(); });
  }

  ~HostCopyEngine() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;  // workers finish the queue first
    }
    work_cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  CopyEvent copy(Direction dir, std::span<const CopyRegion> regions,
                 std::span<const CopyEvent> after) override {
    return submit(dir, regions, after, nullptr);
  }

  CopyEvent timed_copy(Direction dir, std::span<const CopyRegion> regions,
                       std::span<const CopyEvent> after, CopySpan& span) override {
    span = {offload::TimeMark::host_pending(), offload::TimeMark::host_pending()};
    return submit(dir, regions, after, &span);
  }

  void synchronize() override {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [&] { return queue_.empty() && busy_ == 0; });
  }

  Backend backend() const override { return Backend::kHost; }
  StreamHandle stream(Direction) const override { return nullptr; }
  int device() const override { return -1; }

 private:
  CopyEvent submit(Direction dir, std::span<const CopyRegion> regions,
                   std::span<const CopyEvent> after, const CopySpan* span) {
    (void)dir;  // one queue: host "DMA engines" serve both directions in submission order
    auto batch = std::make_shared<Batch>();
    if (span) batch->span = *span;
    for (const CopyEvent& e : after)
      if (!e.is_null()) batch->after.push_back(e);
    std::vector<Piece> pieces = split(regions, batch);
    batch->done = CopyEvent::host(static_cast<int>(pieces.size()));
    CopyEvent done = batch->done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (Piece& p : pieces) queue_.push_back(std::move(p));
    }
    if (pieces.size() == 1)
      work_cv_.notify_one();
    else
      work_cv_.notify_all();
    return done;
  }

  struct Batch {
    std::vector<CopyEvent> after;  // start no piece before these completed
    CopyEvent done;                // one part per piece
    CopySpan span;                 // timed_copy: first piece's start, last piece's end
  };
  struct Piece {
    std::shared_ptr<Batch> batch;
    std::vector<CopyRegion> parts;  // consecutive sub-ranges of the batch's regions
  };

  // Packs the regions into at most threads * kPiecesPerWorker pieces of >= min_piece_bytes (the
  // last may be smaller), splitting large regions. Always at least one piece, so `after` is
  // honoured.
  std::vector<Piece> split(std::span<const CopyRegion> regions,
                           const std::shared_ptr<Batch>& batch) {
    std::size_t total = 0;
    for (const CopyRegion& r : regions) total += r.bytes;
    // kPiecesPerWorker pieces per worker: a worker the OS delays takes fewer of them.
    std::size_t most = static_cast<std::size_t>(options_.threads) * kPiecesPerWorker;
    std::size_t target = std::max(options_.min_piece_bytes, (total + most - 1) / most);
    target = (target + kPieceAlign - 1) / kPieceAlign * kPieceAlign;
    std::vector<Piece> pieces(1, Piece{batch, {}});
    std::size_t room = target;
    for (const CopyRegion& r : regions) {
      for (std::size_t off = 0; off < r.bytes;) {
        if (room == 0) {
          pieces.push_back(Piece{batch, {}});
          room = target;
        }
        std::size_t n = std::min(room, r.bytes - off);
        pieces.back().parts.push_back(
            {static_cast<char*>(r.dst) + off, static_cast<const char*>(r.src) + off, n});
        off += n;
        room -= n;
      }
    }
    return pieces;
  }

  void worker_main() {
    allocator::bind_current_thread(options_.placement);  // best effort; unbound placement: no-op
    for (;;) {
      Piece piece;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ and drained
        piece = std::move(queue_.front());
        queue_.pop_front();
        ++busy_;
      }
      run(piece);
      {
        std::lock_guard<std::mutex> lock(mu_);
        --busy_;
        if (queue_.empty() && busy_ == 0) idle_cv_.notify_all();
      }
    }
  }

  static void run(const Piece& piece) {
    try {
      for (const CopyEvent& e : piece.batch->after) e.synchronize();
    } catch (const std::exception& e) {
      // Never hang the consumer: log, copy anyway, complete.
      log_error(str_cat("host copy engine: waiting for a prerequisite event failed: ", e.what()));
    }
    const CopySpan& span = piece.batch->span;
    if (!span.start.is_null()) span.start.set_first();
    for (const CopyRegion& r : piece.parts) std::memcpy(r.dst, r.src, r.bytes);
    if (!span.end.is_null()) span.end.set_last();  // before done: a waiter sees the end
    piece.batch->done.signal();
  }

  const CopyEngineOptions options_;
  std::mutex mu_;
  std::condition_variable work_cv_;  // workers wait for pieces or stop_
  std::condition_variable idle_cv_;  // synchronize() waits for queue_ empty and busy_ == 0
  std::deque<Piece> queue_;          // GUARDED_BY(mu_)
  int busy_ = 0;                     // GUARDED_BY(mu_) workers running a piece
  bool stop_ = false;                // GUARDED_BY(mu_)
  std::vector<std::thread> workers_;
};

}  // namespace

std::unique_ptr<CopyEngine> make_copy_engine(const CopyEngineOptions& options, DeviceOps ops) {
  STP_CHECK(options.threads >= 1 && options.threads <= 64, "copy engine threads=", options.threads,
            " must be in [1, 64]");
  STP_CHECK(options.min_piece_bytes >= 4096,
            "copy engine min_piece_bytes=", options.min_piece_bytes, " must be >= 4096");
  STP_CHECK(options.chunk_bytes >= (64 << 10), "copy engine chunk_bytes=", options.chunk_bytes,
            " must be >= 65536");
  if (allocator::resolve_backend(options.backend) == Backend::kCuda)
    return make_cuda_copy_engine(options, std::move(ops));
  return std::make_unique<HostCopyEngine>(options);
}

}  // namespace stp::offload
