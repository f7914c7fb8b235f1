// lorakeep/checkpoint_manager.h: the checkpoint manager. Saves LoRA adapter
// checkpoints atomically and with checksums in Hugging Face Trainer's layout,
// keeps the best by an evaluation metric, rotates the rest, resumes, and at
// the end of training reloads the best adapter CPU-first into the live model.
//
//   lorakeep::CheckpointOptions o;
//   o.output_dir = "runs/exp1";
//   o.save_total_limit = 2;
//   lorakeep::CheckpointManager ckpt(o);
//   ckpt.resume(*model, state, &optimizer);               // a fresh run: nothing to resume
//   ckpt.save(*model, lora_config, state, &optimizer);   // checkpoint-<step>/
//   ckpt.load_best_into(*model);                          // at the end
//
// Every call takes the model first, then what it reads or fills in the
// order config, state, optimizer; an optional optimizer is a pointer (null:
// none), everything else a reference.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include "lorakeep/checkpoint_options.h"
#include "lorakeep/lora_config.h"
#include "lorakeep/training_state.h"
#include "lorakeep/transfer.h"

namespace lorakeep {

class Coordinator;  // lorakeep/distributed.h

// A committed checkpoint.
struct CheckpointInfo {
  std::int64_t step = 0;
  std::string path;  // <output_dir>/checkpoint-<step>
  double epoch = 0;
  Metrics metrics;               // the evaluation at that step (empty if none)
  std::optional<double> metric;  // metrics[metric_key], if evaluated
};

// What save_async reports when it returns.
struct AsyncSave {
  CheckpointInfo checkpoint;         // the one being written (its step, path, metrics), as save returns it
  std::uint64_t snapshot_bytes = 0;  // host memory held until the write is done: adapter + optimizer + RNG
  double blocking_seconds = 0;       // how long the calling thread waited
};

// Owns a run directory for its lifetime: holds an flock on <output_dir>/.lock
// (a second manager on the same directory fails with kLocked naming the
// holder's pid). On creation it removes .tmp-checkpoint-* leftovers (logged),
// ignores checkpoint directories without a valid manifest (logged) and
// recomputes the best from the manifests, so a resumed run keeps its best.
//
// Move-only. Not thread-safe: call from the training loop's thread.
class CheckpointManager {
 public:
  // Creates output_dir if needed. Throws Error(kInvalidArgument) for bad
  // options, Error(kLocked), Error(kIOError).
  explicit CheckpointManager(CheckpointOptions options);

  // One of several ranks (lorakeep/distributed.h) sharing output_dir: every
  // rank constructs its manager with the same options, and every call below
  // except the accessors becomes collective (each rank calls it, in the same
  // order). Rank 0 alone creates, locks and writes the directory; the others
  // check that they see rank 0's files (a node-local directory fails here on
  // every rank with Error(kInvalidArgument)). Then:
  //  - save: each rank's adapter is hashed and compared with rank 0's (replicas
  //    that differ fail the save on every rank with Error(kIncompatible)
  //    naming them); the evaluation recorded must be equal on every rank
  //    (reduce each rank's share with Coordinator::reduce_metrics first; else
  //    Error(kInvalidArgument) on every rank); each rank's RNG state is sent
  //    to rank 0, which writes lorakeep_rng_<rank>.safetensors for each, commits
  //    and rotates, and tells every rank its outcome: the same best and state
  //    everywhere, or the same Error everywhere.
  //  - load_best_into and resume: rank 0 chooses; every rank validates; only
  //    when every rank succeeded does any rank write its own live parameters
  //    (CPU-first, the same memory bound per rank). A failure on any rank is
  //    raised on every rank, naming it.
  // A rank that does not arrive within the coordinator's timeout makes the
  // others throw Error(kIOError) naming it. With world size 1 this is the
  // constructor above.
  CheckpointManager(CheckpointOptions options, const Coordinator& coordinator);
  ~CheckpointManager();
  CheckpointManager(CheckpointManager&&) noexcept;
  CheckpointManager& operator=(CheckpointManager&&) noexcept;
  CheckpointManager(const CheckpointManager&) = delete;
  CheckpointManager& operator=(const CheckpointManager&) = delete;

  // Commits checkpoint-<state.global_step>: the adapter of `module` as `lora`
  // describes it (PEFT's files, tensors streamed from any device through host
  // memory; a config that disagrees with the armed layers fails first, as
  // adapter_tensors says, with nothing written), every named adapter
  // (inject_lora's adapter_name) in its folder "<name>/" with the config it
  // was armed or loaded with, as Trainer's checkpoints of a PEFT model hold
  // them, and which adapter is active (a model of named adapters only, as
  // PEFT allows, has no adapter files in the checkpoint itself, and `lora`
  // is unused); optimizer
  // and RNG state if the options say so, trainer_state.json from `state`, and
  // the manifest last; each file fsynced, the directory renamed into place and
  // output_dir fsynced. The evaluation recorded at this step (state.last_metrics)
  // becomes the checkpoint's metrics; state's best fields are updated. Then
  // rotation deletes what the policy no longer keeps (failures are logged,
  // never thrown). A checkpoint of the same step is replaced atomically.
  // On failure nothing new is visible, earlier checkpoints are intact, and
  // `state` is unchanged. Throws Error(kInvalidArgument) as adapter_tensors,
  // Error(kIOError) naming the path.
  CheckpointInfo save(torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                      torch::optim::Optimizer* optimizer = nullptr);

  // save, off the training thread: copies the adapter, the optimizer state
  // (serialized) and the RNG states into host memory on the calling thread,
  // the only time it waits, then writes, fsyncs and commits them on a
  // background thread. At most one save is in flight: this call first waits
  // for the previous one and raises its error, if it failed. `state` gets the
  // best as it will be once this checkpoint is in. A background failure
  // leaves earlier checkpoints intact and is raised by the next save,
  // save_async, wait, load_best_into or resume (best(), latest() and
  // checkpoints() wait for it without raising); the destructor waits, never
  // abandons a save half done, and logs an error nobody collected. Host
  // memory: one snapshot, reported as snapshot_bytes. With several ranks the
  // checks and the metrics' reduction happen on the calling thread (as in
  // save); rank 0's background thread commits and posts the outcome through
  // the store, the others' wait for it there (never a collective off the
  // training thread).
  AsyncSave save_async(torch::nn::Module& module, const LoraConfig& lora, TrainingState& state,
                       torch::optim::Optimizer* optimizer = nullptr);

  // Waits for the save in flight and raises its error; the second form first
  // resets the best fields of `state` from what was committed. Returns the
  // newest committed checkpoint.
  std::optional<CheckpointInfo> wait();
  std::optional<CheckpointInfo> wait(TrainingState& state);

  std::optional<CheckpointInfo> best() const;
  std::optional<CheckpointInfo> latest() const;
  std::vector<CheckpointInfo> checkpoints() const;  // committed, by step

  // Loads the best checkpoint's adapter into the live LoRA parameters through
  // the transfer engine, CPU-first (load_adapter; an unarmed model is armed),
  // in pieces of options().chunk_bytes; with named adapters, each of them
  // (all validated before the first write), and the checkpoint's active
  // adapter is made active (set_adapter). With options().verify_checksums every
  // byte the load reads is checked once against the manifest before anything
  // is written: each tensor against its own checksum, the config against its
  // file's. The report is logged. A corrupt or missing best fails with
  // Error(kCorruption) / Error(kNotFound) naming the file, the model
  // unchanged; with fallback_to_next_best it tries the next best instead,
  // logging an error for each one skipped. Throws Error(kNotFound) when no
  // checkpoint was evaluated, Error(kIncompatible) when the adapter does not
  // fit the model (nothing changed).
  TransferReport load_best_into(torch::nn::Module& module);

  // Restores the newest intact checkpoint (or the one
  // options().resume_from_checkpoint names, or none if it says "none") into
  // `module` (CPU-first; every adapter, as load_best_into), `state`
  // (progress, log history, early-stopping state, best recomputed from the
  // manifests; this run's max_steps, num_train_epochs, batch size and
  // logging / eval / save steps stay the caller's, as Trainer keeps its new
  // arguments: see TrainingState::resume_from), the optimizer (if given and
  // saved) and the RNG (the CPU generator and each CUDA device's, if saved). Everything is read and
  // checked before anything changes: the adapter planned and verified as
  // load_best_into does, trainer_state.json, the optimizer archive and the
  // RNG file verified against their file checksums and parsed. A checkpoint
  // that fails (kCorruption, kNotFound) is logged and the next older one is
  // tried, nothing changed by the failed one. The optimizer's saved state is
  // parsed into host memory (one copy of it), then each parameter's state
  // moves to the parameter's device in turn (any device: LibTorch's own
  // optimizers through their typed state): the device holds the final state
  // and, until it is in place, the optimizer's state from before the call
  // (none in a fresh run), never a second copy of the saved state. Returns
  // the checkpoint, or nullopt for a fresh run (`state` unchanged). Throws
  // Error(kIncompatible) if the adapter or optimizer state does not fit,
  // Error(kOutOfMemory) if the device cannot hold the optimizer's state (the
  // model, optimizer, RNG and state unchanged either way); a named checkpoint
  // that is missing or damaged is an Error (kNotFound, kCorruption), never
  // skipped. The best stays this run directory's.
  std::optional<CheckpointInfo> resume(torch::nn::Module& module, TrainingState& state,
                                       torch::optim::Optimizer* optimizer = nullptr);

  const CheckpointOptions& options() const;
  const Coordinator& coordinator() const;
  const std::string& metric_key() const;  // e.g. "eval_loss"
  bool greater_is_better() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lorakeep
