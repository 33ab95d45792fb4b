// Runs the seed's loop (wasm-seed/src/lib.rs) in Node's WebAssembly runtime,
// for compact-heap and for Vec<u8> on dlmalloc and on wee_alloc, and records
// the linear memory the host sees (memory.buffer.byteLength) as it grows.
//
//   node wasm-seed/run.mjs ITERATIONS DIR
//
// DIR holds dlmalloc.wasm and wee_alloc.wasm (run.sh builds them); the table
// (results.md), the samples (results.csv) and the chart (memory.svg) are
// written there. Exits with 1 if compact-heap's memory grows by 8 MiB or more
// between iteration 1 000 and the end.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const iterations = Number(process.argv[2] ?? 100000);
const dir = process.argv[3] ?? "target/wasm-seed";
const every = iterations <= 10000 ? 100 : 500; // a sample every `every` iterations
const MIB = 1 << 20;
const LIMIT = 8 * MIB; // compact-heap's allowed growth from iteration 1 000 on

const builds = {
  dlmalloc: new WebAssembly.Module(readFileSync(join(dir, "dlmalloc.wasm"))),
  wee_alloc: new WebAssembly.Module(readFileSync(join(dir, "wee_alloc.wasm"))),
};
const variants = [
  { name: "compact-heap", build: "dlmalloc", store: 0, color: "#1b9e77" },
  { name: "compact-heap, wee_alloc global", build: "wee_alloc", store: 0, color: "#66a61e", dash: "6 3" },
  { name: "Vec<u8> on dlmalloc", build: "dlmalloc", store: 1, color: "#7570b3" },
  { name: "Vec<u8> on wee_alloc", build: "wee_alloc", store: 1, color: "#d95f02" },
];
const tensors = [
  { name: "1 MiB", jitter: 0 },
  { name: "768–1280 KiB", jitter: 1 },
];

function runOne(variant, tensor) {
  const instance = new WebAssembly.Instance(builds[variant.build], {});
  const { memory, start, run, held_bytes } = instance.exports;
  const samples = [[0, memory.buffer.byteLength]];
  const started = performance.now();
  let done = 0;
  let ended = "ok";
  try {
    start(variant.store, tensor.jitter, 42);
    while (done < iterations) {
      done = run(Math.min(every, iterations - done));
      samples.push([done, memory.buffer.byteLength]);
    }
  } catch (e) {
    if (!(e instanceof WebAssembly.RuntimeError)) throw e;
    ended = `trap after ${done} iterations (${e.message}) at ${mib(memory.buffer.byteLength)}`;
    samples.push([done, memory.buffer.byteLength]);
  }
  const seconds = (performance.now() - started) / 1000;
  const at = (i) => samples.find(([n]) => n >= i)?.[1];
  return {
    variant, tensor, samples, done, ended, seconds,
    at1000: at(Math.min(1000, iterations)),
    end: samples[samples.length - 1][1],
    peak: Math.max(...samples.map(([, b]) => b)),
    held: variant.store === 0 && ended === "ok" ? held_bytes() : undefined,
  };
}

const mib = (b) => (b === undefined ? "–" : `${(b / MIB).toFixed(1)} MiB`);

const results = [];
for (const tensor of tensors) {
  for (const variant of variants) {
    process.stderr.write(`${variant.name}, ${tensor.name} tensors ... `);
    const r = runOne(variant, tensor);
    process.stderr.write(`${r.done} iterations, ${mib(r.end)}, ${r.seconds.toFixed(1)} s\n`);
    results.push(r);
  }
}

// The table.
let md = `Linear memory (memory.buffer.byteLength) of the seed's loop, ${iterations} iterations, ` +
  `Node ${process.version}. Made by \`bash wasm-seed/run.sh ${iterations}\`.\n\n` +
  "| store | tensors | at iteration 1 000 | at the end | growth from 1 000 | iterations | ended | time |\n" +
  "|---|---|---|---|---|---|---|---|\n";
for (const r of results) {
  md += `| ${r.variant.name} | ${r.tensor.name} | ${mib(r.at1000)} | ${mib(r.end)} | ` +
    `${r.at1000 === undefined ? "–" : mib(r.end - r.at1000)} | ${r.done} | ${r.ended} | ${r.seconds.toFixed(1)} s |\n`;
}
md += "\ncompact-heap's own count of the bytes it holds at the end: " +
  results.filter((r) => r.held !== undefined)
    .map((r) => `${r.variant.name}, ${r.tensor.name}: ${mib(r.held)}`).join("; ") + ".\n";
writeFileSync(join(dir, "results.md"), md);
writeFileSync(join(dir, "results.csv"), "store,tensors,iteration,bytes\n" + results.flatMap((r) =>
  r.samples.map(([i, b]) => `${r.variant.name},${r.tensor.name},${i},${b}`)).join("\n") + "\n");
writeFileSync(join(dir, "memory.svg"), chart(results));
console.log(md);
console.log(`written: ${join(dir, "results.md")}, results.csv, memory.svg`);

// The check: compact-heap's memory stays flat from iteration 1 000 on.
let ok = true;
for (const r of results.filter((r) => r.variant.store === 0)) {
  if (r.ended !== "ok" || (iterations > 1000 && r.end - r.at1000 >= LIMIT)) {
    console.log(`FAIL: ${r.variant.name}, ${r.tensor.name}: ${r.ended}, grew ${mib(r.end - r.at1000)} after iteration 1 000`);
    ok = false;
  }
}
process.exit(ok ? 0 : 1);

// An SVG chart by hand: one panel per tensor kind, memory on a log scale
// against iterations, one line per store.
function chart(results) {
  const W = 460, H = 300, L = 64, R = 12, T = 36, B = 44, gap = 24;
  const width = 2 * W + gap, height = H + 74;
  const lo = Math.log2(1 * MIB), hi = Math.log2(4096 * MIB);
  const x = (i) => L + (i / iterations) * (W - L - R);
  const y = (b) => T + (1 - (Math.log2(Math.max(b, MIB)) - lo) / (hi - lo)) * (H - T - B);
  const esc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  let s = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n`;
  tensors.forEach((tensor, p) => {
    s += `<g transform="translate(${p * (W + gap)},0)">\n`;
    s += `<text x="${(L + W - R) / 2}" y="18" text-anchor="middle" font-size="13">` +
      `Seed loop in wasm, ${esc(tensor.name)} tensors: linear memory</text>\n`;
    for (const m of [1, 4, 16, 64, 256, 1024, 4096]) {
      const yy = y(m * MIB).toFixed(1);
      s += `<line x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}" stroke="#ddd"/>` +
        `<text x="${L - 6}" y="${(Number(yy) + 4).toFixed(1)}" text-anchor="end">${m >= 1024 ? m / 1024 + " GiB" : m + " MiB"}</text>\n`;
    }
    for (let k = 0; k <= 4; k++) {
      const i = (iterations * k) / 4, xx = x(i);
      s += `<line x1="${xx}" x2="${xx}" y1="${H - B}" y2="${H - B + 4}" stroke="black"/>` +
        `<text x="${xx}" y="${H - B + 16}" text-anchor="middle">${i.toLocaleString("en")}</text>\n`;
    }
    s += `<line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="black"/>` +
      `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="black"/>\n` +
      `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">iterations</text>\n`;
    for (const r of results.filter((r) => r.tensor === tensor)) {
      const pts = r.samples.map(([i, b]) => `${x(i).toFixed(1)},${y(b).toFixed(1)}`).join(" ");
      s += `<polyline fill="none" stroke="${r.variant.color}" stroke-width="2"` +
        `${r.variant.dash ? ` stroke-dasharray="${r.variant.dash}"` : ""} points="${pts}"/>\n`;
      if (r.ended !== "ok") {
        const [i, b] = r.samples[r.samples.length - 1];
        s += `<text x="${(x(i) + 4).toFixed(1)}" y="${(y(b) + 4).toFixed(1)}" fill="${r.variant.color}">✕ trap</text>\n`;
      }
    }
    s += "</g>\n";
  });
  variants.forEach((v, k) => {
    const lx = 20 + k * (width / variants.length), ly = height - 18;
    s += `<line x1="${lx}" x2="${lx + 24}" y1="${ly}" y2="${ly}" stroke="${v.color}" stroke-width="2"` +
      `${v.dash ? ` stroke-dasharray="${v.dash}"` : ""}/>` +
      `<text x="${lx + 30}" y="${ly + 4}">${esc(v.name)}</text>\n`;
  });
  return s + "</svg>\n";
}
