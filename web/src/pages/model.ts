import { get, q } from '../api';
import { bytes, error, field, h, input, layerKind, remember } from '../dom';
import type { Page } from '../main';

interface Tensor {
  name: string;
  shape: number[];
  type: string;
  parameters: number;
  bytes: number;
  bits_per_weight: number;
}

// The tensors grouped as a tree: one branch per layer, the rest at the top.
function tree(tensors: Tensor[], filter: string): HTMLElement {
  let re: RegExp | null = null;
  try {
    re = filter ? new RegExp(filter, 'i') : null;
  } catch {
    re = null;
  }
  const shown = tensors.filter((t) => !filter || (re ? re.test(t.name) : t.name.includes(filter)) || t.type === filter);
  const groups = new Map<string, Tensor[]>();
  for (const t of shown) {
    const [layer] = layerKind(t.name);
    const key = layer === null ? 'model' : `layer ${layer}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(t);
  }
  const leaf = (t: Tensor) =>
    h('tr', { class: 'tensor' }, h('td', {}, t.name), h('td', {}, t.shape.join(' × ')), h('td', {}, t.type),
      h('td', { class: 'num' }, t.parameters.toLocaleString()), h('td', { class: 'num' }, bytes(t.bytes)),
      h('td', { class: 'num' }, t.bits_per_weight.toFixed(2)));
  const out = h('div', { class: 'tree' }, h('p', { class: 'muted' }, `${shown.length} of ${tensors.length} tensors`));
  for (const [key, ts] of groups) {
    const params = ts.reduce((a, t) => a + t.parameters, 0);
    out.append(h('details', { open: groups.size <= 3 || !!filter },
      h('summary', {}, `${key} — ${ts.length} tensors, ${params.toLocaleString()} parameters`),
      h('table', { class: 'grid' }, h('tbody', {}, ...ts.map(leaf)))));
  }
  return out;
}

export function modelPage(arg: string): Page {
  const path = input('path', arg, { placeholder: 'model folder, .safetensors or .gguf', size: 60 });
  if (!arg) remember(path, 'model');
  const filter = input('filter', '', { placeholder: 'filter: regex, name part or type', size: 30 });
  const out = h('div');
  let tensors: Tensor[] = [];
  const treeBox = h('div');
  const redraw = () => treeBox.replaceChildren(tree(tensors, filter.value));
  filter.addEventListener('input', redraw);
  const load = async (e?: Event) => {
    e?.preventDefault();
    out.replaceChildren(h('p', { class: 'muted' }, 'loading…'));
    try {
      const m = await get<any>(`/api/model?path=${q(path.value)}`);
      tensors = m.tensors;
      const hp = Object.entries(m.hyperparameters ?? {}).map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, JSON.stringify(v))));
      out.replaceChildren(
        h('div', { class: 'card' }, h('h3', {}, `${m.architecture} (${m.format})`),
          h('p', {}, `${m.totals.tensors} tensors, ${Number(m.totals.parameters).toLocaleString()} parameters, ${bytes(m.totals.bytes)}, ${Number(m.totals.bits_per_weight).toFixed(2)} bits per weight`),
          h('table', { class: 'kv' }, h('tbody', {}, ...hp))),
        field('Filter', filter), treeBox);
      redraw();
    } catch (err) {
      error(out, err);
    }
  };
  const el = h('section', {}, h('h2', {}, 'Model'),
    h('form', { onsubmit: load }, field('Path', path), h('button', { type: 'submit' }, 'Inspect')), out);
  if (path.value) load();
  return { el };
}
