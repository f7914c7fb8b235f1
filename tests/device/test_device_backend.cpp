// The test device as LibTorch sees a backend: its device guard (one device,
// one stream, events that are no-ops: the copies are synchronous), and in
// LibTorch 2.x its name and hooks object.
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/version.h>

#include "test_device.h"

#if TORCH_VERSION_MAJOR >= 2
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <c10/core/DeviceType.h>
#endif

namespace lorakeep::test_device {
namespace {

constexpr c10::DeviceType kType = c10::DeviceType::PrivateUse1;

struct Guard final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return kType; }
  c10::Device exchangeDevice(c10::Device) const override { return device(); }
  c10::Device getDevice() const override { return device(); }
  void setDevice(c10::Device d) const override {
    TORCH_CHECK(d.type() == kType && d.index() <= 0, "test device: there is no ", d);
  }
  void uncheckedSetDevice(c10::Device) const noexcept override {}
  c10::Stream getStream(c10::Device d) const noexcept override { return c10::Stream(c10::Stream::DEFAULT, d); }
  c10::Stream exchangeStream(c10::Stream s) const noexcept override { return s; }
  c10::DeviceIndex deviceCount() const noexcept override { return 1; }
  // Events: every operation is over when it returns.
  void record(void** event, const c10::Stream&, const c10::DeviceIndex, const c10::EventFlag) const override {
    *event = nullptr;
  }
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
};
C10_REGISTER_GUARD_IMPL(PrivateUse1, Guard);

#if TORCH_VERSION_MAJOR >= 2
struct Hooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return 1; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  // torch::manual_seed seeds the accelerator's generator too. The device
  // draws its random numbers on the CPU (the fallback), so a CPU generator
  // of its own stands for it.
  const at::Generator& getDefaultGenerator(c10::DeviceIndex) const override {
    static const at::Generator generator = at::make_generator<at::CPUGeneratorImpl>();
    return generator;
  }
};

struct Registration {
  Registration() {
    c10::register_privateuse1_backend("lktest");
    static Hooks hooks;
    at::RegisterPrivateUse1HooksInterface(&hooks);
  }
};
const Registration registration;
#endif

}  // namespace

c10::Device device() { return c10::Device(kType, 0); }

}  // namespace lorakeep::test_device
