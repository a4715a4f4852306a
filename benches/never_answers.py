# Accepts connections on 127.0.0.1:18099 and never answers: the host that never answers (benches/queue_bound.sh).
import socket, threading, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 18099)); s.listen(4096)
held = []
while True:
    c, _ = s.accept(); held.append(c)
