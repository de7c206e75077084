// Only in the row "Haraka, TCP_NODELAY": Haraka's smtp_client leaves Nagle's algorithm on, so
// the message's last small write waits for the backend's delayed ACK (40 ms on Linux) before
// it leaves. Every outgoing connection this process opens gets TCP_NODELAY here, to show
// Haraka's best case beside the one it ships with.
const net = require('node:net')

const connect = net.connect
net.connect = (...args) => connect(...args).setNoDelay(true)
net.createConnection = net.connect
