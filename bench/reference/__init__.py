"""A bare trio-websocket relay: the ceiling of t2t's transport stack.

It accepts WebSocket connections and forwards every message it receives to
every other open connection, without parsing, authenticating or queueing
anything. The fanout benchmark runs the same load against it and reports
t2t's throughput as a ratio of this one's.
"""
