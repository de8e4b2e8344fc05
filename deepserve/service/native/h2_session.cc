// gRPC's wire format over one HTTP/2 connection, for a server that runs on an asyncio event loop.
//
// Why: a front with its own threads (grpc_front.cc, over libgrpc++) puts one more thread on the
// path of every call: at one client that thread's ~80 us per call made gRPC slower than HTTP, whose
// parser (httptools) runs in the event loop's own callbacks. This module does for gRPC what
// httptools does for HTTP/1.1: no I/O and no threads. The connection's asyncio protocol feeds it
// the bytes it received and writes out the bytes it returns; nghttp2 does HTTP/2 (HPACK, flow
// control, SETTINGS, PING, stream states), and this file the gRPC layer above it: the method from
// :path, grpc-timeout, length-prefixed messages (gzip/deflate ones inflated here), the response
// headers, messages and the grpc-status trailers, and Trailers-Only answers for calls refused here
// (unknown method, message over the size limit) without reaching Python.
//
// Python API (module service._grpc_h2, class Session), one per connection, event-loop thread only:
//   Session(methods, streaming, max_receive_bytes)
//   feed(data) -> [(stream, kind, method_index, payload, time_remaining_s)]
//       kind START: a call's first message; MESSAGE: a later message of a streaming call;
//            HALF_CLOSE: the client sent its last message (streaming calls); CANCELLED: the client
//            reset the stream, and answers to it are dropped from then on
//       raises RuntimeError when the peer broke the protocol: close the connection
//   output() -> bytes to write to the socket (b"" when none)
//   reply(stream, payload)            unary: the answer and status OK
//   write(stream, payload)            streaming: one message
//   finish(stream, code, message)     the final status, after the messages written before it
//   metadata(stream)                  the call's request headers as ((key, value), ...)
//   hold(stream), release(stream)     pace one streaming call: stop / resume acknowledging its DATA
//   active_calls(), partial_bytes(), shutdown_notice(), goaway()

#include <nghttp2/nghttp2.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace deepserve {
namespace {

enum Kind { kStart = 0, kMessage = 1, kHalfClose = 2, kCancelled = 3 };
// gRPC status codes used here
constexpr int kOk = 0, kInvalidArgument = 3, kResourceExhausted = 8, kUnimplemented = 12, kInternal = 13;

struct Stream {
  int32_t id = 0;
  int method = -1;
  bool is_post = false, is_grpc = false;
  std::string path, encoding;
  double timeout_s = -1.0;
  std::vector<std::pair<std::string, std::string>> metadata;
  std::string in;  // received bytes not yet cut into messages
  bool held = false;       // Python's inbox for this call is full: its window stays shut
  size_t unconsumed = 0;   // bytes received while held, acknowledged (WINDOW_UPDATE) on release
  bool started = false;        // its first message went to Python
  bool remote_closed = false;  // the client sent END_STREAM
  bool answered = false;       // the final status is submitted: nothing more goes to Python
  bool responding = false;     // response headers submitted, DATA drawn from `out`
  bool deferred = false;       // the body callback ran dry and waits for resume_data
  std::string out;             // framed messages not yet handed to nghttp2
  size_t out_pos = 0;
  bool trailers_due = false;
  int code = kOk;
  std::string message;
};

struct Event {
  int32_t stream;
  Kind kind;
  int method;
  std::string payload;
  double timeout_s;
};

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// grpc-timeout: up to 8 digits and a unit (H M S m u n)
double parse_timeout(std::string_view v) {
  if (v.size() < 2 || v.size() > 9) return -1.0;
  double n = 0;
  for (char c : v.substr(0, v.size() - 1)) {
    if (c < '0' || c > '9') return -1.0;
    n = n * 10 + (c - '0');
  }
  switch (v.back()) {
    case 'H': return n * 3600;
    case 'M': return n * 60;
    case 'S': return n;
    case 'm': return n / 1e3;
    case 'u': return n / 1e6;
    case 'n': return n / 1e9;
    default: return -1.0;
  }
}

// grpc-message is percent-encoded: bytes outside printable ASCII, and '%' itself
std::string percent_encode(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c <= 0x7e && c != '%') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

nghttp2_nv header(const std::string& name, const std::string& value) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
          NGHTTP2_NV_FLAG_NONE};  // nghttp2 copies both
}

class Session {
 public:
  Session(const std::vector<std::string>& methods, const std::vector<bool>& streaming, int64_t max_receive)
      : streaming_(streaming), max_receive_(max_receive) {
    if (methods.size() != streaming.size()) throw std::invalid_argument("one streaming flag per method");
    for (size_t i = 0; i < methods.size(); ++i) methods_[methods[i]] = static_cast<int>(i);
    nghttp2_session_callbacks* callbacks;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, OnBeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, OnHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, OnFrameRecv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, OnDataChunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, OnStreamClose);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, OnFrameSend);
    // Window updates are ours to send (nghttp2_session_consume), so a streaming call whose
    // handler is behind can be paced alone: its stream window stays shut while the others flow.
    nghttp2_option* option;
    nghttp2_option_new(&option);
    nghttp2_option_set_no_auto_window_update(option, 1);
    int rv = nghttp2_session_server_new2(&session_, callbacks, this, option);
    nghttp2_option_del(option);
    nghttp2_session_callbacks_del(callbacks);
    if (rv != 0) throw std::runtime_error(nghttp2_strerror(rv));
    // Windows big enough that a request of a few MB (a batch of images) is not paced by
    // WINDOW_UPDATE round trips; OnDataChunk acknowledges data as it arrives.
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1024},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, kStreamWindow},
    };
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, 2);
    nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
  }

  ~Session() { nghttp2_session_del(session_); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  py::list Feed(const py::bytes& data) {
    std::string_view bytes = data;
    ssize_t rv = nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    if (rv < 0) throw std::runtime_error(std::string("HTTP/2: ") + nghttp2_strerror(static_cast<int>(rv)));
    py::list out(events_.size());
    for (size_t i = 0; i < events_.size(); ++i) {
      Event& e = events_[i];
      py::object payload = e.kind == kStart || e.kind == kMessage
                               ? py::object(py::bytes(e.payload.data(), e.payload.size()))
                               : py::object(py::none());
      out[i] = py::make_tuple(e.stream, static_cast<int>(e.kind), e.method, payload, e.timeout_s);
    }
    events_.clear();
    return out;
  }

  py::bytes Output() {
    std::string out;
    for (;;) {
      const uint8_t* chunk = nullptr;
      ssize_t n = nghttp2_session_mem_send(session_, &chunk);
      if (n < 0) throw std::runtime_error(std::string("HTTP/2: ") + nghttp2_strerror(static_cast<int>(n)));
      if (n == 0) break;
      out.append(reinterpret_cast<const char*>(chunk), static_cast<size_t>(n));
    }
    return py::bytes(out);
  }

  void Reply(int32_t id, const py::bytes& payload) {
    Stream* s = Live(id);
    if (s == nullptr) return;
    Frame(s, payload);
    Close(s, kOk, "");
  }

  void Write(int32_t id, const py::bytes& payload) {
    Stream* s = Live(id);
    if (s == nullptr) return;
    Frame(s, payload);
    Respond(s);
  }

  void Finish(int32_t id, int code, const std::string& message) {
    Stream* s = Live(id);
    if (s != nullptr) Close(s, code, message);
  }

  py::tuple Metadata(int32_t id) {
    Stream* s = Find(id);
    if (s == nullptr) return py::tuple();
    py::list pairs;
    for (const auto& [key, value] : s->metadata) pairs.append(py::make_tuple(key, value));
    return py::tuple(pairs);
  }

  size_t Active() const { return streams_.size(); }

  // Flow control for one streaming call: hold stops acknowledging its DATA (the client can send at
  // most what is left of its stream window), release acknowledges what arrived meanwhile.
  void Hold(int32_t id) {
    if (Stream* s = Find(id)) s->held = true;
  }

  void Release(int32_t id) {
    Stream* s = Find(id);
    if (s == nullptr || !s->held) return;
    s->held = false;
    if (s->unconsumed > 0) nghttp2_session_consume_stream(session_, id, s->unconsumed);
    s->unconsumed = 0;
  }

  int64_t Partial() const { return partial_; }

  // graceful shutdown, step 1: "no new streams soon" (a GOAWAY with the highest stream id)
  void ShutdownNotice() { nghttp2_submit_shutdown_notice(session_); }

  // step 2: the last stream that will be served is the last one that arrived
  void Goaway() {
    nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(session_),
                          NGHTTP2_NO_ERROR, nullptr, 0);
  }

 private:
  static constexpr int32_t kStreamWindow = 4 << 20;
  static constexpr int32_t kConnectionWindow = 16 << 20;

  static Session* Self(void* user) { return static_cast<Session*>(user); }

  Stream* Find(int32_t id) {
    auto it = streams_.find(id);
    return it == streams_.end() ? nullptr : it->second.get();
  }

  Stream* Live(int32_t id) {  // a stream Python may still answer
    Stream* s = Find(id);
    return s == nullptr || s->answered ? nullptr : s;
  }

  // -- receiving --------------------------------------------------------------------------------
  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* user) {
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      auto s = std::make_unique<Stream>();
      s->id = frame->hd.stream_id;
      Self(user)->streams_[s->id] = std::move(s);
    }
    return 0;
  }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                      const uint8_t* value, size_t valuelen, uint8_t, void* user) {
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    Stream* s = Self(user)->Find(frame->hd.stream_id);
    if (s == nullptr) return 0;
    std::string_view key(reinterpret_cast<const char*>(name), namelen);
    std::string_view val(reinterpret_cast<const char*>(value), valuelen);
    if (key == ":path") {
      s->path = val;
    } else if (key == ":method") {
      s->is_post = val == "POST";
    } else if (key == "content-type") {
      s->is_grpc = starts_with(val, "application/grpc");
    } else if (key == "grpc-timeout") {
      s->timeout_s = parse_timeout(val);
    } else if (key == "grpc-encoding") {
      s->encoding = val;
    } else if (key[0] != ':' && key != "te") {
      s->metadata.emplace_back(key, val);
    }
    return 0;
  }

  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* user) {
    Session* self = Self(user);
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
    Stream* s = self->Find(frame->hd.stream_id);
    if (s == nullptr) return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) self->Begin(s);
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) self->EndOfInput(s);
    return 0;
  }

  void Begin(Stream* s) {
    if (!s->is_post || !s->is_grpc) {  // not a gRPC call: plain HTTP answer, as gRPC servers give
      s->answered = true;
      static const std::string key = ":status";
      std::string status = s->is_post ? "415" : "405";
      nghttp2_nv nva[] = {header(key, status)};
      nghttp2_submit_response(session_, s->id, nva, 1, nullptr);
      return;
    }
    auto it = methods_.find(s->path);
    if (it == methods_.end()) {
      Close(s, kUnimplemented, "method " + s->path + " is not implemented");
      return;
    }
    s->method = it->second;
  }

  void EndOfInput(Stream* s) {
    s->remote_closed = true;
    if (s->answered) return;
    if (!s->started) {
      // an empty stream is a finished conversation (grpc.aio and Triton answer OK); a unary call
      // without its request is malformed
      if (streaming_[s->method]) Close(s, kOk, "");
      else Close(s, kInvalidArgument, "no request message");
    } else if (streaming_[s->method]) {
      events_.push_back({s->id, kHalfClose, s->method, {}, -1.0});
    }
  }

  static int OnDataChunk(nghttp2_session* session, uint8_t, int32_t id, const uint8_t* data, size_t len,
                         void* user) {
    Session* self = Self(user);
    Stream* s = self->Find(id);
    // the connection window always reopens at once: one slow call must not stall the others
    nghttp2_session_consume_connection(session, len);
    if (s != nullptr && s->held) {
      s->unconsumed += len;
    } else {
      nghttp2_session_consume_stream(session, id, len);
    }
    if (s != nullptr && !s->answered && s->method >= 0) self->Receive(s, reinterpret_cast<const char*>(data), len);
    return 0;
  }

  // Cut length-prefixed messages out of the stream's bytes. The common case, a whole message in
  // one chunk, is read in place; only a partial message is buffered.
  void Receive(Stream* s, const char* data, size_t len) {
    const size_t held_before = s->in.size();
    std::string_view view(data, len);
    if (!s->in.empty()) {
      s->in.append(data, len);
      view = s->in;
    }
    size_t pos = 0;
    while (view.size() - pos >= 5 && !s->answered) {
      auto* p = reinterpret_cast<const uint8_t*>(view.data() + pos);
      uint64_t n = (uint64_t{p[1]} << 24) | (p[2] << 16) | (p[3] << 8) | p[4];
      if (static_cast<int64_t>(n) > max_receive_) {  // refused before the rest of it arrives
        Refuse(s, kResourceExhausted, "received message larger than max (" + std::to_string(n) + " vs. " +
                                         std::to_string(max_receive_) + ")");
        break;
      }
      if (view.size() - pos - 5 < n) break;
      std::string_view body = view.substr(pos + 5, n);
      pos += 5 + n;
      if (p[0] & 1) {
        std::string plain;
        std::string error = Inflate(s->encoding, body, &plain);
        if (!error.empty()) {
          Refuse(s, error == "unsupported" ? kUnimplemented : kInternal,
                error == "unsupported" ? "grpc-encoding '" + s->encoding + "' is not supported" : error);
          break;
        }
        Deliver(s, std::move(plain));
      } else {
        Deliver(s, std::string(body));
      }
    }
    if (s->answered) {
      std::string().swap(s->in);
    } else if (s->in.empty()) {
      s->in.assign(view.substr(pos));
    } else {
      s->in.erase(0, pos);
    }
    partial_ += static_cast<int64_t>(s->in.size()) - static_cast<int64_t>(held_before);
    // One connection holds at most max_receive bytes of partly received messages, as one HTTP/1.1
    // connection holds at most one body: without this, 1,024 streams each sending most of a
    // maximal message would hold 1,024 times the limit. Flow control cannot bound it (a message may
    // be larger than the windows), so the stream that goes over is refused.
    if (partial_ > max_receive_ + 5 && !s->in.empty()) {  // + 5: one maximal message's prefix
      partial_ -= static_cast<int64_t>(s->in.size());
      std::string().swap(s->in);
      Refuse(s, kResourceExhausted, "this connection's partly received messages exceed " +
                                       std::to_string(max_receive_) +
                                       " bytes (max_body_bytes); send fewer large messages at once");
    }
  }

  // A compressed message: gzip or deflate (what gRPC clients send), never inflated past the limit.
  std::string Inflate(const std::string& encoding, std::string_view body, std::string* out) {
    int window_bits;
    if (encoding == "gzip") window_bits = 16 + MAX_WBITS;
    else if (encoding == "deflate") window_bits = MAX_WBITS;
    else return "unsupported";
    z_stream z{};
    if (inflateInit2(&z, window_bits) != Z_OK) return "cannot start zlib";
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(body.data()));
    z.avail_in = static_cast<uInt>(body.size());
    char buffer[65536];
    int rv = Z_OK;
    while (rv == Z_OK) {
      z.next_out = reinterpret_cast<Bytef*>(buffer);
      z.avail_out = sizeof buffer;
      rv = inflate(&z, Z_NO_FLUSH);
      out->append(buffer, sizeof buffer - z.avail_out);
      if (static_cast<int64_t>(out->size()) > max_receive_) {
        inflateEnd(&z);
        return "decompressed message larger than max (" + std::to_string(max_receive_) + ")";
      }
      if (rv == Z_BUF_ERROR && z.avail_in == 0) break;
    }
    inflateEnd(&z);
    return rv == Z_STREAM_END ? "" : "cannot decompress the message (" + encoding + ")";
  }

  // The session ends a call on its own (an oversized or undecodable message). A call already in
  // Python (a stream past its first message) is told CANCELLED, so its handler stops waiting for
  // requests that will not come; the status the client gets is this one.
  void Refuse(Stream* s, int code, const std::string& message) {
    Close(s, code, message);
    if (s->started) events_.push_back({s->id, kCancelled, s->method, {}, -1.0});
  }

  void Deliver(Stream* s, std::string payload) {
    Kind kind = s->started ? kMessage : kStart;
    if (kind == kMessage && !streaming_[s->method]) return;  // a unary call has one request
    s->started = true;
    events_.push_back({s->id, kind, s->method, std::move(payload), kind == kStart ? s->timeout_s : -1.0});
  }

  static int OnStreamClose(nghttp2_session*, int32_t id, uint32_t, void* user) {
    Session* self = Self(user);
    auto it = self->streams_.find(id);
    if (it == self->streams_.end()) return 0;
    Stream* s = it->second.get();
    if (s->started && !s->answered) self->events_.push_back({id, kCancelled, s->method, {}, -1.0});
    self->partial_ -= static_cast<int64_t>(s->in.size());
    self->streams_.erase(it);
    return 0;
  }

  // After the final frame of a stream the client still sends on, reset it (NO_ERROR), as gRPC
  // servers do, so the client stops sending a request nobody will read.
  static int OnFrameSend(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
    Stream* s = Self(user)->Find(frame->hd.stream_id);
    if (s != nullptr && !s->remote_closed) {
      nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    }
    return 0;
  }

  // -- answering --------------------------------------------------------------------------------
  static void Frame(Stream* s, std::string_view payload) {
    char prefix[5] = {0, static_cast<char>(payload.size() >> 24), static_cast<char>(payload.size() >> 16),
                      static_cast<char>(payload.size() >> 8), static_cast<char>(payload.size())};
    if (s->out_pos == s->out.size()) {
      s->out.clear();
      s->out_pos = 0;
    }
    s->out.append(prefix, 5);
    s->out.append(payload.data(), payload.size());
  }

  void Respond(Stream* s) {  // start the response, or wake its body callback
    if (!s->responding) {
      s->responding = true;
      static const std::string status = ":status", ok = "200", type = "content-type", grpc = "application/grpc";
      nghttp2_nv nva[] = {header(status, ok), header(type, grpc)};
      nghttp2_data_provider body{};
      body.read_callback = ReadBody;
      nghttp2_submit_response(session_, s->id, nva, 2, &body);
    } else if (s->deferred) {
      s->deferred = false;
      nghttp2_session_resume_data(session_, s->id);
    }
  }

  void Close(Stream* s, int code, const std::string& message) {
    s->answered = true;
    if (!s->responding) {  // nothing sent yet: Trailers-Only, one HEADERS frame that ends the stream
      if (s->out.size() == s->out_pos) {
        std::string code_text = std::to_string(code), text = percent_encode(message);
        static const std::string status = ":status", ok = "200", type = "content-type",
                                 grpc = "application/grpc", gs = "grpc-status", gm = "grpc-message";
        nghttp2_nv nva[] = {header(status, ok), header(type, grpc), header(gs, code_text), header(gm, text)};
        nghttp2_submit_response(session_, s->id, nva, message.empty() ? 3 : 4, nullptr);
        return;
      }
    }
    s->trailers_due = true;
    s->code = code;
    s->message = message;
    Respond(s);
  }

  static ssize_t ReadBody(nghttp2_session* session, int32_t id, uint8_t* buf, size_t length, uint32_t* flags,
                          nghttp2_data_source*, void* user) {
    Stream* s = Self(user)->Find(id);
    if (s == nullptr) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return 0;
    }
    size_t n = std::min(length, s->out.size() - s->out_pos);
    std::memcpy(buf, s->out.data() + s->out_pos, n);
    s->out_pos += n;
    if (s->out_pos < s->out.size()) return static_cast<ssize_t>(n);
    if (!s->trailers_due) {
      if (n > 0) return static_cast<ssize_t>(n);
      s->deferred = true;  // until the next write or the final status
      return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    std::string code_text = std::to_string(s->code), text = percent_encode(s->message);
    static const std::string gs = "grpc-status", gm = "grpc-message";
    nghttp2_nv trailers[] = {header(gs, code_text), header(gm, text)};
    int rv = nghttp2_submit_trailer(session, id, trailers, s->message.empty() ? 1 : 2);
    if (rv != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    return static_cast<ssize_t>(n);
  }

  nghttp2_session* session_ = nullptr;
  std::unordered_map<std::string, int> methods_;
  std::vector<bool> streaming_;
  int64_t max_receive_;
  int64_t partial_ = 0;  // bytes of partly received messages, all streams together
  std::unordered_map<int32_t, std::unique_ptr<Stream>> streams_;
  std::vector<Event> events_;
};

}  // namespace
}  // namespace deepserve

PYBIND11_MODULE(_grpc_h2, m) {
  using namespace deepserve;
  m.doc() = "gRPC over one HTTP/2 connection (nghttp2), driven by the event loop: bytes in, bytes out";
  m.attr("START") = static_cast<int>(kStart);
  m.attr("MESSAGE") = static_cast<int>(kMessage);
  m.attr("HALF_CLOSE") = static_cast<int>(kHalfClose);
  m.attr("CANCELLED") = static_cast<int>(kCancelled);
  py::class_<Session>(m, "Session")
      .def(py::init<const std::vector<std::string>&, const std::vector<bool>&, int64_t>(), py::arg("methods"),
           py::arg("streaming"), py::arg("max_receive_bytes"))
      .def("feed", &Session::Feed, py::arg("data"))
      .def("output", &Session::Output)
      .def("reply", &Session::Reply, py::arg("stream"), py::arg("payload"))
      .def("write", &Session::Write, py::arg("stream"), py::arg("payload"))
      .def("finish", &Session::Finish, py::arg("stream"), py::arg("code"), py::arg("message") = "")
      .def("metadata", &Session::Metadata, py::arg("stream"))
      .def("active_calls", &Session::Active)
      .def("hold", &Session::Hold, py::arg("stream"))
      .def("release", &Session::Release, py::arg("stream"))
      .def("partial_bytes", &Session::Partial)
      .def("shutdown_notice", &Session::ShutdownNotice)
      .def("goaway", &Session::Goaway);
}
