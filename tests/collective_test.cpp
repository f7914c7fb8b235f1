// The collective protocol of checkpoint/ (collective.h) and the messages it
// sends (wire.h): every rank learns every outcome, and a malformed message
// from another rank is an Error naming the step, never a crash or a guess.
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "lorakeep/distributed.h"
#include "lorakeep/error.h"
#include "checkpoint/collective.h"
#include "checkpoint/wire.h"
#include "test_util.h"

using namespace lorakeep;
using Catch::Contains;

namespace {

// Two ranks of one job in this process, each with a connection of its own.
struct TwoRanks {
  c10::intrusive_ptr<c10d::TCPStore> server;
  Coordinator rank0;
  Coordinator rank1;

  static c10::intrusive_ptr<c10d::TCPStore> host() {
    c10d::TCPStoreOptions o;
    o.port = 0;
    o.isServer = true;
    o.waitWorkers = false;
    return c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
  }
  static c10::intrusive_ptr<c10d::TCPStore> client(const c10d::TCPStore& server) {
    c10d::TCPStoreOptions o;
    o.port = server.getPort();
    o.waitWorkers = false;
    return c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
  }
  TwoRanks() : server(host()), rank0(server, 0, 2), rank1(client(*server), 1, 2) {}
};

}  // namespace

TEST_CASE("messages round-trip, and a malformed one is refused naming the step", "[distributed][wire]") {
  const Metrics metrics = {{"eval_loss", 0.25}, {"accuracy", 0.75}};
  const std::vector<std::int64_t> steps = {100, 200, 1ll << 40};
  const std::string bytes = lorakeep::detail::WireWriter().i64(7).steps(steps).metrics(metrics).str("tail").bytes();
  lorakeep::detail::WireReader r(bytes, "test message");
  CHECK(r.i64() == 7);
  CHECK(r.steps() == steps);
  CHECK(r.metrics() == metrics);
  CHECK(r.str() == "tail");
  CHECK_NOTHROW(r.end());

  auto refused = [](const std::string& malformed, auto read) {
    lorakeep::detail::WireReader in(malformed, "save of step 40");
    const Error e = test::capture_error([&] { read(in); });
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("malformed message") && Contains("save of step 40"));
  };
  // Cut anywhere: each prefix of the message fails, never reads past it.
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    INFO("prefix of " << n << " bytes");
    refused(bytes.substr(0, n), [](lorakeep::detail::WireReader& in) {
      in.i64();
      in.steps();
      in.metrics();
      in.str();
      in.end();
    });
  }
  // A count far past what the message holds, a negative one, trailing bytes.
  refused(lorakeep::detail::WireWriter().i64(1ll << 60).bytes(), [](lorakeep::detail::WireReader& in) { in.steps(); });
  refused(lorakeep::detail::WireWriter().i64(-1).bytes(), [](lorakeep::detail::WireReader& in) { in.metrics(); });
  refused(lorakeep::detail::WireWriter().i64(-5).bytes(), [](lorakeep::detail::WireReader& in) { in.str(); });
  refused(bytes + "x", [](lorakeep::detail::WireReader& in) {
    in.i64();
    in.steps();
    in.metrics();
    in.str();
    in.end();
  });
}

TEST_CASE("an outcome carries its payload or its error, and a malformed one is refused", "[distributed][wire]") {
  const std::string ok = lorakeep::detail::RankOutcome::run([] { return std::string("payload"); });
  const lorakeep::detail::RankOutcome good = lorakeep::detail::RankOutcome::decode(ok, 3, "x");
  CHECK(good.ok);
  CHECK(good.rank == 3);
  CHECK(good.payload == "payload");

  const std::string failed = lorakeep::detail::RankOutcome::run(
      []() -> std::string { throw Error(ErrorCode::kNotFound, "no such file 'a'"); });
  const lorakeep::detail::RankOutcome bad = lorakeep::detail::RankOutcome::decode(failed, 2, "x");
  CHECK_FALSE(bad.ok);
  CHECK(bad.code == ErrorCode::kNotFound);
  const Error raised = test::capture_error([&] { bad.raise(4); });
  CHECK(raised.code() == ErrorCode::kNotFound);
  CHECK(std::string(raised.what()) == "rank 2: no such file 'a'");
  CHECK(std::string(test::capture_error([&] { bad.raise(1); }).what()) == "no such file 'a'");

  for (const std::string& malformed :
       {std::string(), std::string("garbage"), ok + "x",
        lorakeep::detail::WireWriter().i64(0).i64(99).str("m").bytes(),  // no such code
        lorakeep::detail::WireWriter().i64(5).str("p").bytes()}) {       // neither ok nor failed
    const Error e = test::capture_error(
        [&] { lorakeep::detail::RankOutcome::decode(malformed, 1, "validation of 'c'"); });
    CHECK(e.code() == ErrorCode::kCorruption);
    CHECK_THAT(e.what(), Contains("malformed message") && Contains("validation of 'c'"));
  }
}

TEST_CASE("a malformed message from another rank fails the collective step with kCorruption", "[distributed][wire]") {
  TwoRanks job;
  // Rank 1 runs another version that sends another encoding: rank 0 raises
  // an Error naming the step instead of reading garbage as an outcome.
  std::thread other([&] { job.rank1.all_gather("opening of 'run'", "\x01\x02not an outcome"); });
  const Error e = test::capture_error(
      [&] { lorakeep::detail::gather_outcomes(job.rank0, "opening of 'run'", [] { return std::string("fine"); }); });
  other.join();
  CHECK(e.code() == ErrorCode::kCorruption);
  CHECK_THAT(e.what(),
             Contains("malformed message") && Contains("opening of 'run'") && Contains("same lorakeep version"));
}

TEST_CASE("every rank learns every outcome and raises the same error", "[distributed]") {
  TwoRanks job;
  std::vector<lorakeep::detail::RankOutcome> seen1;
  std::thread other([&] {
    seen1 = lorakeep::detail::gather_outcomes(job.rank1, "step", []() -> std::string {
      throw Error(ErrorCode::kCorruption, "checkpoint file 'f' fails its checksum");
    });
  });
  const std::vector<lorakeep::detail::RankOutcome> seen0 = lorakeep::detail::gather_outcomes(
      job.rank0, "step", [] { return std::string("done"); });
  other.join();
  for (const std::vector<lorakeep::detail::RankOutcome>* seen :
       std::vector<const std::vector<lorakeep::detail::RankOutcome>*>{&seen0, &seen1}) {
    REQUIRE(seen->size() == 2);
    CHECK((*seen)[0].ok);
    CHECK((*seen)[0].payload == "done");
    CHECK_FALSE((*seen)[1].ok);
    const auto failed = lorakeep::detail::failures(*seen);
    REQUIRE(failed.size() == 1);
    CHECK(lorakeep::detail::all_damaged(failed));
    const Error e = test::capture_error([&] { lorakeep::detail::raise_any(*seen, 2); });
    CHECK(std::string(e.what()) == "rank 1: checkpoint file 'f' fails its checksum");
  }
}
