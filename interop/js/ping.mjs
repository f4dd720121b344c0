// Dial a leam node with js-libp2p's defaults (TCP, Noise, Yamux), run identify and ping, and
// print one JSON line: {"peer", "rtt_ms", "protocol_version", "agent_version", "protocols"}.
// Usage: node ping.mjs <multiaddr of the leam node> <hex ed25519 seed of a member key>
import './polyfill.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'

const [addr, seedHex] = process.argv.slice(2)
const privateKey = await generateKeyPairFromSeed('Ed25519', Buffer.from(seedHex, 'hex'))
const node = await createLibp2p({
  privateKey,
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), ping: ping() }
})
const timeout = setTimeout(() => { console.error('timed out'); process.exit(3) }, 20000)
const identified = new Promise((resolve) => {
  node.addEventListener('peer:identify', (evt) => resolve(evt.detail))
})
const ma = multiaddr(addr)
const conn = await node.dial(ma)
const rtt = await node.services.ping.ping(ma)
const id = await identified
clearTimeout(timeout)
console.log(JSON.stringify({
  peer: conn.remotePeer.toString(),
  self: node.peerId.toString(),
  rtt_ms: rtt,
  protocol_version: id.protocolVersion,
  agent_version: id.agentVersion,
  protocols: id.protocols
}))
await node.stop()
process.exit(0)
