// An independent DKIM verifier (mailauth, not dkimpy): reads a message on stdin, prints one
// line per signature: "<result> <algorithm> d=<domain> s=<selector>[ (<comment>)]".
// DNS: the nameserver given as 127.0.0.1:PORT in argv[2], through Node's own resolver.
import { dkimVerify } from 'mailauth/lib/dkim/verify.js';
import { Resolver } from 'node:dns/promises';

const resolver = new Resolver({ timeout: 3000, tries: 2 });
resolver.setServers([process.argv[2]]);

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const result = await dkimVerify(Buffer.concat(chunks), {
  resolver: (name, rrtype) => resolver.resolve(name, rrtype),
});
for (const r of result.results) {
  const status = r.status || {};
  const comment = status.result === 'pass' ? '' : ` (${status.comment || ''})`;
  console.log(`${status.result} ${r.algo} d=${r.signingDomain} s=${r.selector}${comment}`);
}
