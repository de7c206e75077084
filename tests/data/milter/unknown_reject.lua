-- An SMTP "ID" verb reaches a milter only as an unknown command, which the MTA rejects
-- anyway; checkid records its argument as the declared identity. example.net does not
-- authorize 192.0.2.1, so MAIL is refused with checkid's own reply.
conn = mt.connect("inet:" .. port .. "@127.0.0.1")
if conn == nil then error("mt.connect() failed") end
if mt.conninfo(conn, "mx.example.com", "192.0.2.1") ~= nil then error("mt.conninfo() failed") end
if mt.helo(conn, "example.com") ~= nil then error("mt.helo() failed") end
if mt.unknown(conn, "ID example.net") ~= nil then error("mt.unknown() failed") end
if mt.mailfrom(conn, "<alice@example.net>") ~= nil then error("mt.mailfrom() failed") end
if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("MAIL: expected a reply code") end
mt.disconnect(conn)
