-- Option negotiation: checkid asks only for what it uses, and only from the offer.
conn = mt.connect("inet:" .. port .. "@127.0.0.1")
if conn == nil then error("mt.connect() failed") end
if mt.negotiate(conn, nil, nil, nil) ~= nil then error("mt.negotiate() failed") end
if not mt.test_action(conn, SMFIF_ADDHDRS) then error("ADDHDRS not requested") end
if mt.test_action(conn, SMFIF_CHGBODY) then error("CHGBODY requested") end
if mt.test_action(conn, SMFIF_CHGFROM) then error("CHGFROM requested") end
if not mt.test_option(conn, SMFIP_NR_HDR) then error("NR_HDR not requested") end
if mt.test_option(conn, SMFIP_NR_MAIL) then error("MAIL must be answered") end
if mt.test_option(conn, SMFIP_NOBODY) then error("the body is needed when the engine says CONTINUE") end
mt.disconnect(conn)
