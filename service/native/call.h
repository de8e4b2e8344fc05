// One gRPC call as the front tracks it, the events it sends Python and the answers it gets back.
// Included by grpc_front.cc only; everything here is internal to that module.

#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

namespace py = pybind11;

namespace deepserve {

enum Kind { kStart = 0, kMessage = 1, kHalfClose = 2, kCancelled = 3 };
enum OpType { kRequestOp, kReadOp, kWriteOp, kFinishOp, kDoneOp };
enum AnswerType { kReply, kWrite, kFinish };

struct Call;

struct Op {  // the tag of one posted operation
  Call* call;
  OpType type;
};

// One RPC, from the moment an accept is posted for it until every operation on it completed.
struct Call {
  explicit Call(grpc::ServerCompletionQueue* cq)
      : cq(cq), stream(&ctx), request_op{this, kRequestOp}, read_op{this, kReadOp},
        write_op{this, kWriteOp}, finish_op{this, kFinishOp}, done_op{this, kDoneOp} {}

  grpc::ServerCompletionQueue* cq;
  grpc::GenericServerContext ctx;
  grpc::GenericServerAsyncReaderWriter stream;
  grpc::ByteBuffer incoming;
  Op request_op, read_op, write_op, finish_op, done_op;

  uint64_t id = 0;
  int method = -1;           // index into Front::methods_, -1 when unknown
  bool started = false;      // the first message went to Python
  int pending = 0;           // operations posted and not completed, the done-notification included
  bool writing = false;      // a Write is in flight (gRPC allows one at a time)
  bool finish_wanted = false;
  bool finish_sent = false;  // Finish or WriteAndFinish posted: nothing more goes out
  bool dead = false;         // cancelled or failed: answers are dropped
  std::deque<grpc::ByteBuffer> writes;  // streaming messages behind the write in flight
  grpc::Status final_status;
};

struct Event {
  uint64_t call;
  Kind kind;
  int method;
  double remaining;
  grpc::ByteBuffer payload;  // START and MESSAGE only
};

struct Answer {
  uint64_t call;
  AnswerType type;
  grpc::ByteBuffer payload;
  grpc::Status status;
};

inline grpc::ByteBuffer to_buffer(const py::bytes& payload) {
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(payload.ptr(), &data, &size) != 0) throw py::error_already_set();
  grpc::Slice slice(data, static_cast<size_t>(size));  // a copy: the bytes object may go away
  return grpc::ByteBuffer(&slice, 1);
}

inline py::object to_bytes(const grpc::ByteBuffer& buffer) {
  grpc::Slice single;
  if (buffer.TrySingleSlice(&single).ok()) {
    return py::bytes(reinterpret_cast<const char*>(single.begin()), single.size());
  }
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return py::bytes();
  PyObject* out = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(buffer.Length()));
  if (out == nullptr) throw py::error_already_set();
  char* dst = PyBytes_AS_STRING(out);
  for (const auto& s : slices) {
    std::memcpy(dst, s.begin(), s.size());
    dst += s.size();
  }
  return py::reinterpret_steal<py::object>(out);
}

inline bool ends_with(const std::string& s, const char* suffix) {
  size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}


}  // namespace deepserve
