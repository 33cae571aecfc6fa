import socket, time, sys

def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str): a = a.encode()
        elif isinstance(a, int): a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)

class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port)); self.buf = b""
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def send(self, data): self.s.sendall(data)
    def _line(self):
        while b"\r\n" not in self.buf: self.buf += self.s.recv(1 << 20)
        i = self.buf.index(b"\r\n"); l = self.buf[:i]; self.buf = self.buf[i+2:]; return l
    def _n(self, n):
        while len(self.buf) < n + 2: self.buf += self.s.recv(1 << 20)
        d = self.buf[:n]; self.buf = self.buf[n+2:]; return d
    def reply(self):
        l = self._line(); t = l[:1]
        if t in (b"+", b"-"): return l[1:].decode()
        if t == b":": return int(l[1:])
        if t == b"$":
            n = int(l[1:]); return None if n < 0 else self._n(n)
        if t == b"*":
            n = int(l[1:]); return None if n < 0 else [self.reply() for _ in range(n)]
        raise Exception(l)
    def cmd(self, *a): self.send(enc(*a)); return self.reply()
    def pipeline(self, cmds, depth=1000):
        for i in range(0, len(cmds), depth):
            chunk = cmds[i:i+depth]; self.send(b"".join(chunk))
            for _ in chunk: self.reply()

c = Conn(6399)
def server_cpu():
    info = c.cmd("INFO", "cpu").decode()
    d = dict(l.split(":") for l in info.splitlines() if ":" in l)
    return float(d["used_cpu_user"]) + float(d["used_cpu_sys"])
def fill(n):
    c.cmd("DEL", "q", "{q}:processing:c1")
    for i in range(0, n, 1000):
        c.cmd("LPUSH", "q", *[("m%08d" % j) for j in range(i, min(n, i+1000))])
N = 200000
def run(name, fn):
    fill(N)
    c.cmd("CONFIG", "RESETSTAT")
    t0 = server_cpu(); w0 = time.time()
    fn()
    t1 = server_cpu(); w1 = time.time()
    print(f"{name:48s} server CPU {((t1-t0)/N)*1e6:6.3f} µs/msg   wall {(w1-w0):.2f}s")

# fetch: pipelined LMOVE
run("fetch: pipelined LMOVE (1/msg)", lambda: c.pipeline([enc("LMOVE","q","{q}:processing:c1","RIGHT","LEFT")]*N))
MOVE = "local items = redis.call('RPOP', KEYS[1], ARGV[1]); if items then redis.call('LPUSH', KEYS[2], unpack(items)) end; return items"
sha = c.cmd("SCRIPT", "LOAD", MOVE).decode()
for batch in (32, 128, 256):
    run(f"fetch: script RPOP n + LPUSH (batch {batch})", lambda b=batch: c.pipeline([enc("EVALSHA", sha, 2, "q", "{q}:processing:c1", b)]*(N//b), depth=64))
# ack cost: fill processing list, then ack oldest-first
def setup_proc():
    c.cmd("DEL","q","{q}:processing:c1")
    for i in range(0, N, 1000):
        c.cmd("LPUSH", "{q}:processing:c1", *[("m%08d" % j) for j in range(i, min(N, i+1000))])
def run_ack(name, fn):
    setup_proc(); c.cmd("CONFIG","RESETSTAT")
    t0 = server_cpu(); fn(); t1 = server_cpu()
    left = c.cmd("LLEN","{q}:processing:c1")
    print(f"{name:48s} server CPU {((t1-t0)/N)*1e6:6.3f} µs/msg   left {left}")
run_ack("ack: pipelined LREM key -1 elem (oldest first)", lambda: c.pipeline([enc("LREM","{q}:processing:c1",-1,"m%08d" % j) for j in range(N)]))
ACK = """local n = #ARGV; local tail = redis.call('LRANGE', KEYS[1], -n, -1)
local ok = #tail == n
if ok then for i = 1, n do if tail[n - i + 1] ~= ARGV[i] then ok = false; break end end end
if ok then redis.call('LTRIM', KEYS[1], 0, -n - 1); return n end
local removed = 0
for i = 1, n do removed = removed + redis.call('LREM', KEYS[1], -1, ARGV[i]) end
return removed"""
sha2 = c.cmd("SCRIPT","LOAD",ACK).decode()
for batch in (32, 128, 256):
    def f(b=batch):
        cmds=[]
        for i in range(0, N, b):
            cmds.append(enc("EVALSHA", sha2, 1, "{q}:processing:c1", *["m%08d" % j for j in range(i, min(N, i+b))]))
        c.pipeline(cmds, depth=64)
    run_ack(f"ack: script in-order LTRIM (batch {batch}, fenced)", f)
print(c.cmd("INFO","server").decode().split("redis_version:")[1].split()[0])
