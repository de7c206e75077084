-- A registered, authenticated sender: continue at MAIL and RCPT, then at end of message the
-- Authent: header inserted at index 0 (the very top) and ACCEPT. miltertest offers
-- SMFIP_HDR_LEADSPC, which checkid takes (DKIM needs raw header values): the values it sends
-- then carry their own leading space.
conn = mt.connect("inet:" .. port .. "@127.0.0.1")
if conn == nil then error("mt.connect() failed") end
if mt.conninfo(conn, "mx.example.com", "192.0.2.1") ~= nil then error("mt.conninfo() failed") end
if mt.helo(conn, "example.com") ~= nil then error("mt.helo() failed") end
if mt.mailfrom(conn, "<alice@example.com>", "SIZE=100") ~= nil then error("mt.mailfrom() failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("MAIL: expected continue") end
if mt.rcptto(conn, "<bob@example.org>") ~= nil then error("mt.rcptto() failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("RCPT: expected continue") end
if mt.header(conn, "Subject", "a test\n\tfolded") ~= nil then error("mt.header() failed") end
if mt.eoh(conn) ~= nil then error("mt.eoh() failed") end
if mt.bodystring(conn, "hello\r\n") ~= nil then error("mt.bodystring() failed") end
if mt.eom(conn) ~= nil then error("mt.eom() failed") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("EOM: expected accept") end
if not mt.eom_check(conn, MT_HDRINSERT, "Authent", " 192.0.2.1 example.com SPF1 PASS ratings=S1:A,M2:A,H1:B", 0) then
    error("Authent: not inserted at index 0")
end
-- a second message on the same connection is decided again
if mt.mailfrom(conn, "<carol@example.com>") ~= nil then error("second mt.mailfrom() failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("second MAIL: expected continue") end
mt.disconnect(conn)
