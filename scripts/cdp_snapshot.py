#!/usr/bin/env python3
"""Loads a page in a headless Chromium already listening on a DevTools port
and takes, after each of the given real-time delays, the page's HTML (and,
at the end, a PNG screenshot). Python standard library only: a minimal
WebSocket client speaks the DevTools protocol. Used by dashboard_check.sh,
because the dashboard keeps an event stream open, which stops Chromium's
--virtual-time-budget from ever advancing.

Usage: cdp_snapshot.py DEVTOOLS_PORT URL OUT_PREFIX DELAY_S [DELAY_S ...]
Writes OUT_PREFIX.1.html, OUT_PREFIX.2.html, ... and OUT_PREFIX.png.
"""

import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.request


class DevTools:
    def __init__(self, ws_url):
        rest = ws_url.split("://", 1)[1]
        hostport, path = rest.split("/", 1)
        host, port = hostport.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise RuntimeError("devtools closed the connection")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError("websocket upgrade refused: " + head.decode(errors="replace"))
        self.next_id = 0

    def _recv_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise RuntimeError("devtools closed the connection")
            data += chunk
        return data

    def _send(self, text):
        payload = text.encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _recv(self):
        message = b""
        while True:
            first, second = self._recv_exact(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._recv_exact(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._recv_exact(8))[0]
            payload = self._recv_exact(length)
            message += payload
            if first & 0x80:
                return message.decode()

    def call(self, method, **params):
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})


def main():
    port, url, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    delays = [float(d) for d in sys.argv[4:]]
    deadline = time.time() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            if targets:
                break
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit("no DevTools page target")
        time.sleep(0.2)
    tools = DevTools(targets[0]["webSocketDebuggerUrl"])
    tools.call("Page.enable")
    tools.call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
               deviceScaleFactor=1, mobile=False)
    tools.call("Page.navigate", url=url)
    for index, delay in enumerate(delays, start=1):
        time.sleep(delay)
        html = tools.call("Runtime.evaluate", expression="document.documentElement.outerHTML",
                          returnByValue=True)["result"]["value"]
        with open(f"{prefix}.{index}.html", "w") as out:
            out.write(html)
    shot = tools.call("Page.captureScreenshot", format="png")["data"]
    with open(f"{prefix}.png", "wb") as out:
        out.write(base64.b64decode(shot))


if __name__ == "__main__":
    main()
