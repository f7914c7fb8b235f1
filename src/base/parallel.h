// Private: a tiny work-sharing loop on plain threads, for I/O-and-memory
// bound work (reading and hashing) that LibTorch's intra-op pool would run
// on one thread where it counts physical cores.
#pragma once

#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace lorakeep::detail {

// Calls fn(i) for every i in [0, count), on up to `threads` threads (the
// caller's included), handing out indices one at a time so uneven items
// balance. A fn that takes (i, worker) also learns which thread it runs on,
// worker in [0, threads), for state of its own per thread. The first
// exception thrown by any call is rethrown here after all threads stopped;
// the remaining items are skipped.
template <class Fn>
void run_parallel(std::size_t count, unsigned threads, Fn&& fn) {
  std::atomic<std::size_t> next{0};
  std::exception_ptr error;
  std::mutex mu;
  auto worker = [&](unsigned w) {
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (error) return;
      }
      const std::size_t i = next.fetch_add(1);
      if (i >= count) return;
      try {
        if constexpr (std::is_invocable_v<Fn&, std::size_t, unsigned>) {
          fn(i, w);
        } else {
          fn(i);
        }
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error) error = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads && t < count; ++t) pool.emplace_back(worker, t);
  worker(0);
  for (std::thread& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace lorakeep::detail
