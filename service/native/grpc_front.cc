// The gRPC front end of the server: HTTP/2 and gRPC framing in C++ threads, whole calls handed to
// Python in batches.
//
// Why: grpc.aio spends ~0.65 ms of Python CPU per unary call and accepts one new call per
// event-loop turn, so concurrent calls reached the batcher one at a time (bench/RESULTS.md). Here
// a completion-queue thread accepts and reads calls, with many accepts posted at once, queues
// them, and wakes the event loop through an eventfd only when the queue goes from empty to
// non-empty: one wake-up then drains every call that arrived meanwhile.
//
// The service is generic (grpc::AsyncGenericService): a call arrives as raw bytes and the index
// of its method in the list Python gave, so this file knows nothing of KServe or protobuf.
// Methods not in that list are answered UNIMPLEMENTED here, without waking Python.
//
// Python API (module service._grpc_front, class Front):
//   Front(address, max_receive_bytes, max_send_bytes, threads, methods, streaming)
//   port, fileno()            the bound port; an eventfd that is readable while events wait
//   poll() -> [(call, kind, method_index, payload, time_remaining_s)]
//       kind START: a call's first message; MESSAGE: a later message of a streaming call;
//            HALF_CLOSE: the client sent its last message; CANCELLED: the client went away or
//            its deadline passed, and answers to the call are dropped from then on
//       time_remaining_s: until the client's deadline, or -1 when it set none
//   metadata(call)            the call's request metadata as ((key, value), ...)
//   reply(call, payload, defer)       unary: the answer with status OK, in one operation
//   write(call, payload, defer)       streaming: one message (written in order)
//   finish(call, code, message, defer)  the final status, after the messages written before it
//       defer=False posts on the caller's thread (lowest latency); defer=True hands the answer to
//       the poster thread, so a busy event loop does not pay for the socket write
//   shutdown(grace_s)         stop accepting, let calls finish for grace_s, cancel the rest

#include <absl/synchronization/mutex.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "call.h"

namespace py = pybind11;

namespace deepserve {
namespace {

class Front {
 public:
  Front(const std::string& address, int max_receive, int max_send, int threads,
        const std::vector<std::string>& methods, const std::vector<bool>& streaming)
      : streaming_(streaming) {
    if (methods.size() != streaming.size()) throw std::invalid_argument("one streaming flag per method");
    for (size_t i = 0; i < methods.size(); ++i) methods_[methods[i]] = static_cast<int>(i);
    event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (event_fd_ < 0) throw std::runtime_error("eventfd failed");
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
    builder.SetMaxReceiveMessageSize(max_receive);
    builder.SetMaxSendMessageSize(max_send);
    // a second server on a taken port must fail, not silently take half the traffic
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.RegisterAsyncGenericService(&service_);
    for (int i = 0; i < std::max(1, threads); ++i) queues_.push_back(builder.AddCompletionQueue());
    {
      py::gil_scoped_release release;
      server_ = builder.BuildAndStart();
    }
    if (!server_ || port_ == 0) {
      close(event_fd_);
      throw std::runtime_error("cannot bind gRPC on " + address);
    }
    for (auto& cq : queues_) {
      for (int i = 0; i < kAcceptsPerQueue; ++i) Accept(cq.get());
      threads_.emplace_back([this, q = cq.get()] { Run(q); });
    }
    poster_ = std::thread([this] { PostLoop(); });
  }

  ~Front() {
    Shutdown(0.0);
    close(event_fd_);
  }

  int port() const { return port_; }
  int fileno() const { return event_fd_; }

  size_t active() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_.size();
  }

  py::list Poll() {
    uint64_t counter;
    // clear the eventfd before taking the queue: an event queued after this read signals again
    while (read(event_fd_, &counter, sizeof counter) > 0) {
    }
    std::vector<Event> events;
    {
      std::lock_guard<std::mutex> lock(mu_);
      events.swap(events_);
      signalled_ = false;
    }
    py::list out(events.size());
    for (size_t i = 0; i < events.size(); ++i) {
      Event& e = events[i];
      py::object payload = py::none();
      if (e.kind == kStart || e.kind == kMessage) payload = to_bytes(e.payload);
      out[i] = py::make_tuple(e.call, static_cast<int>(e.kind), e.method, payload, e.remaining);
    }
    return out;
  }

  py::tuple Metadata(uint64_t id) {
    std::vector<std::pair<std::string, std::string>> copied;
    {
      // copied under the lock, turned into Python objects after it: an allocation may run the
      // garbage collector, which may let another thread take the GIL and then wait for mu_
      std::lock_guard<std::mutex> lock(mu_);
      Call* call = Find(id);
      if (call == nullptr) return py::tuple();
      for (const auto& [key, value] : call->ctx.client_metadata()) {
        copied.emplace_back(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
      }
    }
    py::list pairs;
    for (const auto& [key, value] : copied) {
      if (ends_with(key, "-bin")) {  // binary metadata, by gRPC's naming rule
        pairs.append(py::make_tuple(key, py::bytes(value)));
      } else {
        pairs.append(py::make_tuple(key, py::str(value)));
      }
    }
    return py::tuple(pairs);
  }

  void Reply(uint64_t id, const py::bytes& payload, bool defer) {
    Submit({id, kReply, to_buffer(payload), grpc::Status::OK}, defer);
  }

  void Write(uint64_t id, const py::bytes& payload, bool defer) {
    Submit({id, kWrite, to_buffer(payload), grpc::Status::OK}, defer);
  }

  void Finish(uint64_t id, int code, const std::string& message, bool defer) {
    Submit({id, kFinish, {}, grpc::Status(static_cast<grpc::StatusCode>(code), message)}, defer);
  }

  void Shutdown(double grace_s) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      stopping_ = true;  // no new accepts
    }
    {
      py::gil_scoped_release release;
      auto deadline = std::chrono::system_clock::now() +
                      std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6));
      server_->Shutdown(deadline);  // waits for running calls until the deadline, then cancels them
      {
        std::lock_guard<std::mutex> lock(out_mu_);
        out_closed_ = true;
      }
      posted_.notify_one();
      if (poster_.joinable()) poster_.join();
      {
        std::lock_guard<std::mutex> lock(mu_);
        closed_ = true;  // from here no operation may be posted: the queues shut down next
      }
      for (auto& cq : queues_) cq->Shutdown();
      for (auto& t : threads_) t.join();
      threads_.clear();
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, call] : calls_) delete call;
    calls_.clear();
    events_.clear();
  }

 private:
  static constexpr int kAcceptsPerQueue = 64;  // a burst of new calls is accepted in one go

  // -- the completion-queue threads ----------------------------------------------------------
  void Accept(grpc::ServerCompletionQueue* cq) {  // under mu_, or before the threads start
    auto* call = new Call(cq);
    call->ctx.AsyncNotifyWhenDone(&call->done_op);  // must come before RequestCall
    service_.RequestCall(&call->ctx, &call->stream, cq, cq, &call->request_op);
  }

  void Run(grpc::ServerCompletionQueue* cq) {
    void* tag = nullptr;
    bool ok = false;
    while (cq->Next(&tag, &ok)) {
      auto* op = static_cast<Op*>(tag);
      std::lock_guard<std::mutex> lock(mu_);
      Complete(op->call, op->type, ok);
    }
  }

  void Complete(Call* call, OpType type, bool ok) {  // under mu_
    switch (type) {
      case kRequestOp:
        if (!ok) {  // shutting down: the call never started, so no done-notification comes
          delete call;
          return;
        }
        Started(call);
        return;
      case kReadOp:
        call->pending--;
        OnRead(call, ok);
        break;
      case kWriteOp:
        call->pending--;
        call->writing = false;
        if (ok) Pump(call);
        else MarkDead(call);
        break;
      case kFinishOp:
        call->pending--;
        break;
      case kDoneOp:
        call->pending--;
        if (call->ctx.IsCancelled()) MarkDead(call);
        break;
    }
    Release(call);
  }

  void Started(Call* call) {  // under mu_
    if (!stopping_) Accept(call->cq);
    call->id = ++next_id_;
    calls_[call->id] = call;
    call->pending = 1;  // the done-notification, armed before the call started
    auto it = methods_.find(call->ctx.method());
    if (it == methods_.end()) {
      call->finish_wanted = true;
      call->final_status = grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                                        "method " + call->ctx.method() + " is not implemented");
      Pump(call);
      return;
    }
    call->method = it->second;
    if (!closed_) {
      call->pending++;
      call->stream.Read(&call->incoming, &call->read_op);
    }
  }

  void OnRead(Call* call, bool ok) {  // under mu_
    if (call->dead) return;
    if (!ok) {
      if (call->started) {
        Push({call->id, kHalfClose, call->method, -1.0, {}});
      } else {  // the client half-closed before sending anything
        call->finish_wanted = true;
        // an empty stream is a finished conversation (grpc.aio and Triton answer OK); a unary
        // call without its request is malformed
        call->final_status = streaming_[call->method]
                                 ? grpc::Status::OK
                                 : grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message");
        Pump(call);
      }
      return;
    }
    Kind kind = call->started ? kMessage : kStart;
    double remaining = -1.0;
    auto deadline = call->ctx.deadline();
    if (kind == kStart && deadline != std::chrono::system_clock::time_point::max()) {
      remaining = std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count();
      remaining = std::max(0.0, remaining);
    }
    call->started = true;
    Push({call->id, kind, call->method, remaining, std::move(call->incoming)});
    call->incoming.Clear();
    if (streaming_[call->method] && !closed_) {
      call->pending++;
      call->stream.Read(&call->incoming, &call->read_op);
    }
  }

  void MarkDead(Call* call) {  // under mu_
    if (call->dead) return;
    call->dead = true;
    call->writes.clear();
    if (call->started) Push({call->id, kCancelled, call->method, -1.0, {}});
  }

  void Release(Call* call) {  // under mu_
    if (call->pending > 0) return;
    calls_.erase(call->id);
    delete call;
  }

  Call* Find(uint64_t id) {  // under mu_
    auto it = calls_.find(id);
    return it == calls_.end() || it->second->dead ? nullptr : it->second;
  }

  void Push(Event event) {  // under mu_
    events_.push_back(std::move(event));
    if (!signalled_) {
      signalled_ = true;
      uint64_t one = 1;
      ssize_t n = write(event_fd_, &one, sizeof one);
      (void)n;  // EAGAIN only when the counter is already non-zero: the loop is being woken anyway
    }
  }

  // -- answers ----------------------------------------------------------------------------------
  // Posting an operation writes to the socket inline, in the posting thread. At one client that
  // is the fastest path; under load the event loop is the bottleneck and ~20% of its time went
  // to those writes, so the caller hands them to the poster thread (defer). A grpc::Alarm kick
  // to the completion-queue thread was tried instead: it goes through gRPC's timer threads and
  // cost ~1 ms of latency per answer.
  void Submit(Answer answer, bool defer) {
    if (!defer) {
      std::lock_guard<std::mutex> lock(mu_);
      Post(answer);
      return;
    }
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(out_mu_);
      if (out_closed_) return;
      outgoing_.push_back(std::move(answer));
      wake = poster_idle_;
      poster_idle_ = false;
    }
    if (wake) posted_.notify_one();  // a futex wake only when the poster sleeps
  }

  void PostLoop() {
    std::vector<Answer> answers;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(out_mu_);
        while (outgoing_.empty() && !out_closed_) {
          poster_idle_ = true;
          posted_.wait(lock);
        }
        if (outgoing_.empty()) return;  // closed and drained
        answers.swap(outgoing_);
      }
      for (auto& answer : answers) {  // one lock each: poll() never waits behind a whole batch
        std::lock_guard<std::mutex> lock(mu_);
        Post(answer);
      }
      answers.clear();
    }
  }

  void Post(Answer& answer) {  // under mu_
    Call* call = Find(answer.call);
    if (call == nullptr || call->finish_sent || call->finish_wanted || closed_) return;
    if (answer.type == kReply && !call->writing && call->writes.empty()) {
      call->finish_sent = true;
      call->pending++;
      call->stream.WriteAndFinish(answer.payload, grpc::WriteOptions(), grpc::Status::OK,
                                  &call->finish_op);
      return;
    }
    if (answer.type == kReply) {  // behind writes of a stream: gRPC allows one write in flight
      call->writes.push_back(std::move(answer.payload));
      call->finish_wanted = true;
      call->final_status = grpc::Status::OK;
    } else if (answer.type == kWrite) {
      // Unbounded: a generation stream writes at most max_tokens small chunks per request, so a
      // client that stops reading costs memory in proportion to what it asked for.
      call->writes.push_back(std::move(answer.payload));
    } else {
      call->finish_wanted = true;
      call->final_status = answer.status;
    }
    Pump(call);
  }

  // Post the next queued write, or the final status once nothing is left to write.
  void Pump(Call* call) {  // under mu_
    if (call->writing || call->finish_sent || closed_) return;
    if (!call->writes.empty()) {
      call->writing = true;
      call->pending++;
      call->stream.Write(call->writes.front(), &call->write_op);
      call->writes.pop_front();
    } else if (call->finish_wanted) {
      call->finish_sent = true;
      call->pending++;
      call->stream.Finish(call->final_status, &call->finish_op);
    }
  }

  grpc::AsyncGenericService service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
  std::vector<std::thread> threads_;
  std::unordered_map<std::string, int> methods_;
  std::vector<bool> streaming_;
  int port_ = 0;
  int event_fd_ = -1;

  std::mutex mu_;  // calls, events and every operation posted on a call
  std::unordered_map<uint64_t, Call*> calls_;
  std::vector<Event> events_;
  uint64_t next_id_ = 0;
  bool signalled_ = false;
  bool stopping_ = false;
  bool closed_ = false;

  std::mutex out_mu_;  // deferred answers; never held together with mu_
  std::condition_variable posted_;
  std::vector<Answer> outgoing_;
  bool poster_idle_ = false;
  bool out_closed_ = false;
  std::thread poster_;
};

}  // namespace
}  // namespace deepserve

PYBIND11_MODULE(_grpc_front, m) {
  using namespace deepserve;
  m.doc() = "gRPC front end: C++ threads accept and frame calls, Python answers them in batches";
  // Debian builds abseil without NDEBUG, which leaves absl::Mutex deadlock detection on: a graph
  // search on every lock inside gRPC, measured at ~4% of the server's CPU under load.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  m.attr("START") = static_cast<int>(kStart);
  m.attr("MESSAGE") = static_cast<int>(kMessage);
  m.attr("HALF_CLOSE") = static_cast<int>(kHalfClose);
  m.attr("CANCELLED") = static_cast<int>(kCancelled);
  py::class_<Front>(m, "Front")
      .def(py::init<const std::string&, int, int, int, const std::vector<std::string>&,
                    const std::vector<bool>&>(),
           py::arg("address"), py::arg("max_receive_bytes"), py::arg("max_send_bytes"),
           py::arg("threads"), py::arg("methods"), py::arg("streaming"))
      .def_property_readonly("port", &Front::port)
      .def("fileno", &Front::fileno)
      .def("active_calls", &Front::active)
      .def("poll", &Front::Poll)
      .def("metadata", &Front::Metadata, py::arg("call"))
      .def("reply", &Front::Reply, py::arg("call"), py::arg("payload"), py::arg("defer") = false)
      .def("write", &Front::Write, py::arg("call"), py::arg("payload"), py::arg("defer") = false)
      .def("finish", &Front::Finish, py::arg("call"), py::arg("code"), py::arg("message") = "",
           py::arg("defer") = false)
      .def("shutdown", &Front::Shutdown, py::arg("grace_s") = 0.0);
}
