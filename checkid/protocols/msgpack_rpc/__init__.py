"""MessagePack-RPC: requests ``[0, msgid, method, params]``, responses ``[1, msgid, error,
result]``, notifications ``[2, method, params]``; pipelined, answered as they complete."""
