"""A forking HTTP/1.1 server that reuses its socket's old fd number, as busybox httpd can.

Each connection's child moves the socket to fd 0 (dup2, then close), opens a file, which takes the
socket's old number, and waits long enough for the agent to look that number up in /proc before
it reads the request on fd 0 and answers on fd 1 (a dup2 copy). An agent that took the file for
the connection would stop following it.

Usage: fork_server.py PORT_FILE
"""

import os
import signal
import socket
import sys
import tempfile
import time

signal.signal(signal.SIGCHLD, signal.SIG_IGN)
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(16)
served = tempfile.NamedTemporaryFile()
with open(sys.argv[1] + ".tmp", "w") as port_file:
    port_file.write(str(listener.getsockname()[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])

while True:
    connection, _ = listener.accept()
    if os.fork() == 0:
        old_fd = connection.fileno()
        os.dup2(old_fd, 0)
        connection.close()
        reused = os.open(served.name, os.O_RDONLY)
        assert reused == old_fd, (reused, old_fd)
        listener.close()
        time.sleep(0.5)
        os.dup2(0, 1)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = os.read(0, 4096)
            if not chunk:
                os._exit(0)
            request += chunk
        os.write(1, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        os._exit(0)
    connection.close()
