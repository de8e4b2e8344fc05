// A gRPC load generator as cheap as the HTTP one (bench/http_load.py): pre-serialized requests sent
// through gRPC's C++ generic stub from one completion-queue thread, answers never parsed.
//
// Why: the grpc.aio client spends 90-270 us of Python per call, as much as the server it
// measures, on the same 2 cores, so gRPC figures came out lower than HTTP's for the client's sake.
//
// Python API (module bench._grpc_load, class Load):
//   Load(target, method, requests, timeout_s)
//   start_closed(concurrency)   keep `concurrency` calls in flight until stop()
//   start_open(rate, seed)      Poisson arrivals at `rate`/s; a call's start is its scheduled time
//   drain() -> [(start, end, code)]   completed calls since the last drain; times on the clock of
//                               Python's time.perf_counter (CLOCK_MONOTONIC), code = grpc status
//   first_ok() -> bytes         the first successful answer; errors() -> {code: first message}
//   stop()                      stop issuing and wait (up to the call timeout) for calls in flight

#include <absl/synchronization/mutex.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace py = pybind11;

namespace {

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct Call {
  grpc::ClientContext ctx;
  grpc::ByteBuffer response;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  double start = 0;
};

class Load {
 public:
  Load(const std::string& target, const std::string& method, const std::vector<py::bytes>& requests,
       double timeout_s)
      : method_(method), timeout_s_(timeout_s) {
    if (requests.empty()) throw std::invalid_argument("need at least one request to send");
    for (const auto& r : requests) {
      std::string bytes = r;
      grpc::Slice slice(bytes.data(), bytes.size());
      requests_.emplace_back(&slice, 1);
    }
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    channel_ = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    stub_ = std::make_unique<grpc::GenericStub>(channel_);
    thread_ = std::thread([this] { Run(); });
  }

  ~Load() {
    Stop();
    cq_.Shutdown();
    if (thread_.joinable()) thread_.join();
    if (scheduler_.joinable()) scheduler_.join();
  }

  void StartClosed(int concurrency) {
    Starting();
    closed_loop_ = true;
    running_ = true;
    for (int i = 0; i < concurrency; ++i) Issue(now_s());
  }

  void StartOpen(double rate, uint64_t seed) {
    if (rate <= 0) throw std::invalid_argument("rate must be positive");
    Starting();
    running_ = true;
    scheduler_ = std::thread([this, rate, seed] {
      std::mt19937_64 rng(seed);
      std::exponential_distribution<double> gap(rate);
      double at = now_s();
      while (running_) {
        double wait = at - now_s();
        if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
        if (!running_) break;
        Issue(at);  // latency counts from the scheduled time: no coordinated omission
        at += gap(rng);
      }
    });
  }

  void Starting() {
    if (started_) throw std::logic_error("a Load runs once: make a new one for the next level");
    started_ = true;
  }

  py::list Drain() {
    std::vector<std::tuple<double, double, int>> done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done.swap(done_);
    }
    py::list out;
    for (const auto& [start, end, code] : done) out.append(py::make_tuple(start, end, code));
    return out;
  }

  py::bytes FirstOk() {
    std::lock_guard<std::mutex> lock(mu_);
    return py::bytes(first_ok_);
  }

  std::map<int, std::string> Errors() {
    std::lock_guard<std::mutex> lock(mu_);
    return errors_;
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      running_ = false;  // under mu_: the completion thread decides to reissue under it too
    }
    if (scheduler_.joinable()) {
      py::gil_scoped_release release;
      scheduler_.join();
    }
    py::gil_scoped_release release;
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait_for(lock, std::chrono::duration<double>(timeout_s_ + 1), [this] { return in_flight_ == 0; });
  }

 private:
  void Issue(double start, bool counted = false) {
    auto* call = new Call;
    call->start = start;
    call->ctx.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::microseconds(static_cast<int64_t>(timeout_s_ * 1e6)));
    size_t i = next_request_.fetch_add(1) % requests_.size();
    if (!counted) {
      std::lock_guard<std::mutex> lock(mu_);
      in_flight_++;
    }
    call->reader = stub_->PrepareUnaryCall(&call->ctx, method_, requests_[i], &cq_);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
  }

  void Run() {
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
      auto* call = static_cast<Call*>(tag);
      double end = now_s();
      int code = static_cast<int>(call->status.error_code());
      bool again = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        done_.emplace_back(call->start, end, code);
        if (code == 0 && first_ok_.empty()) {
          std::vector<grpc::Slice> slices;
          if (call->response.Dump(&slices).ok()) {
            for (const auto& s : slices) first_ok_.append(reinterpret_cast<const char*>(s.begin()), s.size());
          }
        } else if (code != 0 && errors_.count(code) == 0) {
          errors_[code] = call->status.error_message();
        }
        // closed loop: the slot goes to the next call at once; decided under mu_ so that stop()
        // never sees zero in flight while a call is about to be issued
        again = running_ && closed_loop_;
        if (!again) {
          in_flight_--;
          if (in_flight_ == 0) idle_.notify_all();
        }
      }
      delete call;
      if (again) Issue(now_s(), /*counted=*/true);
    }
  }

  std::string method_;
  double timeout_s_;
  std::vector<grpc::ByteBuffer> requests_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> stub_;
  grpc::CompletionQueue cq_;
  std::thread thread_, scheduler_;
  std::atomic<bool> running_{false};
  std::atomic<bool> closed_loop_{false};
  bool started_ = false;
  std::atomic<size_t> next_request_{0};

  std::mutex mu_;
  std::condition_variable idle_;
  int in_flight_ = 0;
  std::vector<std::tuple<double, double, int>> done_;
  std::string first_ok_;
  std::map<int, std::string> errors_;
};

}  // namespace

PYBIND11_MODULE(_grpc_load, m) {
  m.doc() = "gRPC load generator: pre-serialized unary calls from a C++ completion-queue thread";
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);  // see service/native
  py::class_<Load>(m, "Load")
      .def(py::init<const std::string&, const std::string&, const std::vector<py::bytes>&, double>(),
           py::arg("target"), py::arg("method"), py::arg("requests"), py::arg("timeout_s") = 60.0)
      .def("start_closed", &Load::StartClosed, py::arg("concurrency"))
      .def("start_open", &Load::StartOpen, py::arg("rate"), py::arg("seed") = 0)
      .def("drain", &Load::Drain)
      .def("first_ok", &Load::FirstOk)
      .def("errors", &Load::Errors)
      .def("stop", &Load::Stop);
}
