// SVG charts drawn here (no library): a histogram, overlaid histograms, horizontal bars.

const NS = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function fmt(x) {
  if (x === null || x === undefined) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(3);
  return x.toFixed(a < 10 ? 4 : 2).replace(/0+$/, "").replace(/\.$/, "");
}

const W = 320, H = 150, PAD = { l: 36, r: 8, t: 8, b: 22 };

function frame(svg, lo, hi, top) {
  svg.append(el("line", { class: "axis", x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b }));
  svg.append(el("line", { class: "axis", x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b }));
  svg.append(el("text", { x: PAD.l, y: H - 6 }, fmt(lo)));
  svg.append(el("text", { x: W - PAD.r, y: H - 6, "text-anchor": "end" }, fmt(hi)));
  svg.append(el("text", { x: PAD.l - 4, y: PAD.t + 8, "text-anchor": "end" }, fmt(top)));
}

/** Histograms over their own edges, drawn on one x scale: [{edges, counts, cls}] (counts as
 * shares of their total when `shares`, so windows of different sizes compare). */
export function histograms(series, { shares = false, label = "" } = {}) {
  const svg = el("svg", { class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
                          role: "img", "aria-label": label });
  const drawn = series.filter((s) => s.edges && s.edges.length > 1 && s.counts.length);
  if (!drawn.length) {
    svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no values"));
    return svg;
  }
  const lo = Math.min(...drawn.map((s) => s.edges[0]));
  const hi = Math.max(...drawn.map((s) => s.edges[s.edges.length - 1]));
  const heights = drawn.map((s) => {
    const total = s.counts.reduce((a, b) => a + b, 0) || 1;
    return s.counts.map((c) => (shares ? c / total : c));
  });
  const top = Math.max(...heights.flat(), 1e-12);
  const span = hi - lo || 1;
  const x = (v) => PAD.l + ((v - lo) / span) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - (v / top) * (H - PAD.t - PAD.b);
  frame(svg, lo, hi, top);
  drawn.forEach((s, i) => {
    s.counts.forEach((_, j) => {
      let x0 = x(s.edges[j]), x1 = x(s.edges[j + 1]);
      if (hi === lo) { x0 = PAD.l; x1 = W - PAD.r; }  // a constant column: one full-width bin
      const v = heights[i][j];
      const bar = el("rect", {
        class: `bar ${s.cls || ""}`, x: x0 + 0.5, y: y(v), width: Math.max(x1 - x0 - 1, 1),
        height: H - PAD.b - y(v), "fill-opacity": drawn.length > 1 ? 0.55 : 1,
        "data-count": s.counts[j],
      });
      bar.append(el("title", {}, `[${fmt(s.edges[j])}, ${fmt(s.edges[j + 1])}): ${s.counts[j]}`));
      svg.append(bar);
    });
  });
  return svg;
}

/** Horizontal bars: [{label, values: [a, b?]}] (two series overlaid as shares when b given). */
export function bars(items, { label = "" } = {}) {
  const rowH = 16, height = Math.max(items.length, 1) * rowH + 6, left = 110;
  const svg = el("svg", { class: "chart", width: W, height, viewBox: `0 0 ${W} ${height}`,
                          role: "img", "aria-label": label });
  const top = Math.max(...items.flatMap((i) => i.values), 1e-12);
  items.forEach((item, r) => {
    const yy = 3 + r * rowH;
    const name = item.label.length > 16 ? `${item.label.slice(0, 15)}…` : item.label;
    svg.append(el("text", { x: left - 4, y: yy + 11, "text-anchor": "end" }, name));
    item.values.forEach((v, k) => {
      const w = (v / top) * (W - left - 40);
      svg.append(el("rect", { class: `bar ${k ? "b" : ""}`, x: left, y: yy + (k ? 6 : 1),
                              width: Math.max(w, 1), height: item.values.length > 1 ? 6 : 12,
                              "data-count": v }));
    });
    svg.append(el("text", { x: W - 2, y: yy + 11, "text-anchor": "end" },
                  item.values.map(fmt).join(" / ")));
  });
  return svg;
}
