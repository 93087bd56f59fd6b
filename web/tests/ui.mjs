// Browser test of the web app: `tailor serve` on a fresh job store, a small
// real measurement of llama-30m through the API, then every page in headless
// Chromium (playwright-core), checked for what it must show; screenshots go
// to --out. Usage: node ui.mjs --tailor build/tailor --web build/web/dist
//                  --shared /work/shared --out DIR [--chromium /usr/bin/chromium]
//                  [--gradual-fixture build/tests/tailor_gradual_fixture] [--gradual-only]
// The Gradual page is checked on a job the fixture program writes into the
// store (a real gradual run takes too long here); --gradual-only stops after it.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const tailor = path.resolve(arg('tailor', 'build/tailor'));
const web = path.resolve(arg('web', 'build/web/dist'));
const shared = path.resolve(arg('shared', '/work/shared'));
const out = path.resolve(arg('out', 'ui-out'));
const browserPath = arg('chromium', '/usr/bin/chromium');
const gradualFixture = arg('gradual-fixture', '');
const gradualOnly = process.argv.includes('--gradual-only');
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });

const fail = (msg) => {
  console.error(`ui: FAIL: ${msg}`);
  process.exitCode = 1;
  throw new Error(msg);
};
const check = (cond, msg) => {
  if (!cond) fail(msg);
  console.log(`ok: ${msg}`);
};

const model = `${shared}/models/llama-30m`;
// What the fixture committed, to compare the page with.
const gradual = gradualFixture ? JSON.parse(execFileSync(gradualFixture, [`${out}/jobs.db`, model], { encoding: 'utf8' })) : null;
// A number as the page shows it (4 significant digits) against the stored one.
const near = (text, want) => {
  const got = parseFloat(text);
  return Math.abs(got - want) <= 1e-3 * Math.abs(want) + 1e-300;
};
const server = spawn(tailor, ['serve', '--port', '0', '--db', `${out}/jobs.db`, '--allow', out, '--allow', shared,
  '--web', web, '--hf-token-file', `${out}/hf_token`, '--quiet'], { stdio: ['ignore', 'pipe', 'inherit'] });
let browser;
try {
  const url = await new Promise((resolve, reject) => {
    let text = '';
    server.stdout.on('data', (d) => {
      text += d;
      const m = text.match(/(http:\/\/127\.0\.0\.1:\d+\/\?token=[0-9a-f]+)/);
      if (m) resolve(m[1]);
    });
    server.on('exit', (c) => reject(new Error(`tailor serve exited with ${c}`)));
    setTimeout(() => reject(new Error('no URL printed within 30 s')), 30000);
  });
  const base = new URL(url);
  const token = base.searchParams.get('token');
  const api = async (method, p, body) => {
    const r = await fetch(new URL(p, base), {
      method, headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: body ? JSON.stringify(body) : undefined,
    });
    const j = await r.json();
    if (!r.ok) fail(`${method} ${p}: ${r.status} ${j.error}`);
    return j;
  };

  browser = await chromium.launch({ executablePath: browserPath, headless: true, args: ['--no-sandbox'] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);
  if (gradual) await checkGradual(page, base);
  else console.log('skip: no --gradual-fixture, the Gradual page is not checked');
  if (gradualOnly) {
    check(errors.length === 0, `no page errors (${errors.join('; ')})`);
    await browser.close();
    server.kill('SIGTERM');
    process.exit(process.exitCode ?? 0);
  }
  // Jobs: start a measurement from the form, pause and resume it from its row.
  await page.fill('input[name=model]', model);
  await page.fill('input[name=text]', `${shared}/text/calibration.txt`);
  await page.fill('input[name=eval]', `${shared}/text/eval.txt`);
  await page.fill('input[name=types]', 'Q8_0,Q4_K,Q3_K,Q2_K');  // enough points for knees
  await page.selectOption('select[name=level]', 'full');  // measured ΔKL: quality budgets and significant knees
  await page.fill('input[name=ctx]', '128');
  await page.fill('input[name=calib_chunks]', '2');
  const hfSecret = 'hf_UiTestSecret0123456789';
  await page.fill('input[name=hf_token]', hfSecret);
  await page.click('button:has-text("Start measurement")');
  await page.waitForSelector('p.ok:has-text("started job")', { timeout: 60000 });
  // The Hugging Face token went to the server's 0600 file and is shown nowhere.
  const hfFile = `${out}/hf_token`;
  check(fs.existsSync(hfFile) && fs.readFileSync(hfFile, 'utf8') === `${hfSecret}\n` && (fs.statSync(hfFile).mode & 0o777) === 0o600,
    'HF token from the start form stored mode 0600');
  check(await page.inputValue('input[name=hf_token]') === '' && !(await page.content()).includes(hfSecret) &&
    /token is stored/.test(await page.textContent('#hf-token-state')) && !JSON.stringify(await api('GET', '/api/hf-token')).includes(hfSecret),
    'the HF token is cleared from the form and never echoed');
  const job = Number((await page.textContent('p.ok')).match(/job (\d+)/)[1]);
  await page.waitForSelector(`tr[data-job="${job}"]`, { timeout: 30000 });
  check(true, `jobs page lists job ${job} live`);
  await page.click(`tr[data-job="${job}"] button:has-text("Pause")`);
  await page.waitForSelector(`tr[data-job="${job}"][data-state="paused"]`, { timeout: 30000 });
  check(true, 'pause from the page');
  await page.screenshot({ path: `${out}/jobs-paused.png`, fullPage: true });
  await page.click(`tr[data-job="${job}"] button:has-text("Resume")`);
  await page.waitForSelector(`tr[data-job="${job}"][data-state="done"]`, { timeout: 300000 });
  check(true, 'the job reaches done on the page');
  await page.screenshot({ path: `${out}/jobs.png`, fullPage: true });

  // Model: the tensor tree and its filter.
  await page.goto(`${base.origin}/#/model/${encodeURIComponent(model)}`);
  await page.waitForSelector('.tree tr.tensor', { state: 'attached' });
  const all = await page.locator('.tree tr.tensor').count();
  const inspect = await api('GET', `/api/model?path=${encodeURIComponent(model)}`);
  check(all === inspect.tensors.length, `model tree shows all ${inspect.tensors.length} tensors (${all})`);
  await page.fill('input[name=filter]', 'norm');
  const filtered = await page.locator('.tree tr.tensor').count();
  const want = inspect.tensors.filter((t) => /norm/i.test(t.name)).length;
  check(filtered === want && want > 0, `filter norm shows ${want} tensors (${filtered})`);
  await page.screenshot({ path: `${out}/model.png`, fullPage: true });

  // Measurements: curves and heatmap.
  await page.goto(`${base.origin}/#/measurements/${job}`);
  await page.waitForSelector('table.heat td', { state: 'attached' });
  const res = await api('GET', `/api/jobs/${job}/results`);
  const layers = new Set(res.summary.tensors.map((t) => t.tensor.match(/blk\.(\d+)\./)?.[1]).filter(Boolean));
  const rows = await page.locator('table.heat tbody tr').count();
  check(rows === layers.size, `heatmap has one row per layer (${rows} of ${layers.size})`);
  check(await page.locator('canvas#curve').isVisible(), 'ΔKL curve chart is drawn');
  // Knees are marked before any plan exists (from the planner, budget-free).
  const kneePlan = await api('POST', '/api/plan', { model, job, target_bpw: 32 });
  const kneeOf = Object.fromEntries(kneePlan.strategy.tensors.map((t) => [t.name, t.knee]));
  const kneeNames = res.summary.tensors.map((t) => t.tensor).filter((n) => kneeOf[n]).slice(0, 8);
  check(kneeNames.length > 0, `the planner finds knees on llama-30m (${kneeNames.map((n) => `${n}: ${kneeOf[n]}`).join(', ')})`);
  // Show those tensors only: every curve then carries a knee mark.
  await page.fill('input[name=tensors]', `^(${kneeNames.map((n) => n.replace(/\./g, '\\.')).join('|')})$`);
  const shownNames = kneeNames;
  const wantKnees = kneeNames.length;
  await page.waitForFunction((n) => document.querySelector('canvas#curve')?.dataset.knees === String(n) &&
    document.querySelector('canvas#curve')?.dataset.shown === String(n), wantKnees, { timeout: 20000 });
  check(await page.getAttribute('canvas#curve', 'data-planned') === '0',
    `curve marks the knees of all ${wantKnees} shown tensors and no plan yet`);
  await page.screenshot({ path: `${out}/measurements.png`, fullPage: true });

  // Plan: the slider re-plans; the size follows the budget.
  await page.goto(`${base.origin}/#/plan`);
  await page.fill('input[name=model]', model);
  await page.dispatchEvent('input[name=model]', 'change');
  await page.waitForSelector('#plan-summary p');
  const before = await page.textContent('#plan-summary p');
  await page.fill('input[name=bpw]', '8');
  await page.waitForFunction((b) => document.querySelector('#plan-summary p')?.textContent !== b, before, { timeout: 20000 });
  const after = await page.textContent('#plan-summary p');
  check(/bits per weight/.test(after) && after !== before, `plan updates with the budget: "${before}" -> "${after}"`);
  // Other budget kinds: a size in MB, then a max ΔKL; the summary follows each
  // at once and matches what the API plans for the same budget.
  const summaryNums = async () => page.$eval('#plan-summary p', (p) => [Number(p.dataset.bytes), Number(p.dataset.cost)]);
  const [bytes8, cost8] = await summaryNums();
  // Waits for the page to show the plan of `bytes` (the API's answer for the same budget).
  const waitBytes = (n) => page.waitForFunction((b) => Number(document.querySelector('#plan-summary p')?.dataset.bytes) === b,
    n, { timeout: 20000 });
  await page.selectOption('select[name=budget-kind]', 'size');
  const mb = Math.round(bytes8 * 0.7 / 1e4) / 100;
  await page.fill('input[name=size_mb]', String(mb));
  const viaApi = await api('POST', '/api/plan', { model, target_bytes: Math.round(mb * 1e6) });
  await waitBytes(viaApi.strategy.totals.bytes);
  const [bytesMb, costMb] = await summaryNums();
  check(bytesMb <= mb * 1e6 && bytesMb < bytes8 && costMb > cost8,
    `size budget ${mb} MB: plan of ${bytesMb} bytes (as the API plans), ΔKL ${cost8.toExponential(2)} -> ${costMb.toExponential(2)}`);
  await page.selectOption('select[name=budget-kind]', 'kld');
  const maxKld = (costMb + cost8) / 2;
  await page.fill('input[name=max_kld]', String(maxKld));
  const viaApiKld = await api('POST', '/api/plan', { model, max_kld: maxKld });
  await waitBytes(viaApiKld.strategy.totals.bytes);
  const [bytesKld, costKld] = await summaryNums();
  check(costKld <= maxKld && costKld === viaApiKld.strategy.totals.cost && bytesKld < bytes8 && bytesKld > bytesMb,
    `max ΔKL ${maxKld.toExponential(2)}: predicted ${costKld.toExponential(2)} in ${bytesKld} bytes, as the API plans`);
  await page.selectOption('select[name=budget-kind]', 'bpw');
  await waitBytes(bytes8);
  // Override one tensor's type from the table: it becomes a pin rule and stays.
  const sel = page.locator('select[data-tensor]').first();
  const tensor = await sel.getAttribute('data-tensor');
  const was = await sel.inputValue();
  const other = (await sel.locator('option').allTextContents()).find((t) => t !== was);
  await sel.selectOption(other);
  await page.waitForSelector(`select[data-tensor="${tensor}"] + :text("📌"), td:has(select[data-tensor="${tensor}"]):has-text("📌")`, { timeout: 20000 });
  check(await page.locator(`select[data-tensor="${tensor}"]`).inputValue() === other, `override ${tensor}: ${was} -> ${other} (pinned)`);
  await page.fill('input[name=save]', `${out}/plan.yaml`);
  await page.click('button:has-text("Save")');
  await page.waitForSelector('text=saved');
  check(fs.existsSync(`${out}/plan.yaml`), 'strategy saved from the page');
  await page.screenshot({ path: `${out}/plan.png`, fullPage: true });

  // The current plan's types appear on the Measurements curves next to the knees.
  const planTypes = Object.fromEntries((await api('POST', '/api/plan', { model, target_bpw: 8,
    rules: (await page.inputValue('textarea[name=rules]')).split('\n').filter(Boolean) })).strategy.tensors.map((t) => [t.name, t.type]));
  await page.goto(`${base.origin}/#/measurements/${job}`);
  await page.waitForSelector('input[name=tensors]');
  await page.fill('input[name=tensors]', `^(${kneeNames.map((n) => n.replace(/\./g, '\\.')).join('|')})$`);
  await page.waitForFunction((n) => document.querySelector('canvas#curve')?.dataset.planned === String(n),
    shownNames.filter((n) => {
      const c = res.summary.tensors.find((t) => t.tensor === n)?.types[planTypes[n]];
      return c && c.applicable !== false && c.cost > 0;
    }).length, { timeout: 20000 });
  check(await page.getAttribute('canvas#curve', 'data-knees') === String(wantKnees) &&
    (await page.textContent('#curve-marks')).includes('current plan'), 'curve marks the current plan\'s types and the knees');
  await page.screenshot({ path: `${out}/measurements-marks.png`, fullPage: true });

  // Quantize with that strategy and offer the download.
  await page.goto(`${base.origin}/#/quantize`);
  await page.fill('input[name=model]', model);
  await page.fill('input[name=strategy]', `${out}/plan.yaml`);
  await page.fill('input[name=output]', `${out}/plan.gguf`);
  await page.click('button:has-text("Quantize")');
  await page.waitForSelector('a[download]', { timeout: 120000 });
  check(fs.existsSync(`${out}/plan.gguf`), 'quantized GGUF written and offered for download');
  await page.screenshot({ path: `${out}/quantize.png`, fullPage: true });

  // Compare the plan with Q8_0 on a short eval: table and chart.
  await page.fill('input[name=text]', `${shared}/text/eval.txt`);
  await page.fill('input[name=baselines]', 'Q8_0');
  await page.fill('input[name=strategies]', `${out}/plan.yaml`);
  await page.fill('input[name=ctx]', '128');
  await page.fill('input[name=windows]', '2');
  await page.click('button:has-text("Compare")');
  await page.waitForSelector('pre.table', { timeout: 300000 });
  const table = await page.textContent('pre.table');
  check(table.includes('Q8_0') && table.includes('plan'), 'compare table lists Q8_0 and the plan');
  check(await page.locator('canvas#compare-chart').isVisible(), 'compare chart is drawn');
  await page.screenshot({ path: `${out}/compare.png`, fullPage: true });

  check(errors.length === 0, `no page errors (${errors.join('; ')})`);
} catch (e) {
  // What the page showed when it failed, for the log and the artifacts.
  const pages = browser?.contexts().flatMap((c) => c.pages()) ?? [];
  for (const p of pages) {
    await p.screenshot({ path: `${out}/failure.png`, fullPage: true }).catch(() => {});
    console.error(`page text at failure:\n${(await p.textContent('main').catch(() => '')) ?? ''}`);
  }
  throw e;
} finally {
  await browser?.close();
  server.kill('SIGTERM');
}

// Gradual: the fixture job's importance chart, layer heat table, per-block
// results and validation show the numbers the job stored.
async function checkGradual(page, base) {
  const g = gradual;
  await page.waitForSelector(`tr[data-job="${g.id}"] a[href="#/gradual/${g.id}"]`, { timeout: 30000 });
  check(true, `jobs page links gradual job ${g.id} to its results`);
  await page.click(`tr[data-job="${g.id}"] a[href="#/gradual/${g.id}"]`);
  await page.waitForSelector('#gradual-blocks tbody tr');
  const rows = page.locator('#gradual-blocks tbody tr');
  check(await rows.count() === g.blocks.length, `blocks table has the ${g.blocks.length} blocks`);
  const order = await rows.evaluateAll((trs) => trs.map((tr) => Number(tr.dataset.block)));
  check(JSON.stringify(order) === JSON.stringify(g.blocks.map((b) => b.block)), `blocks in processing order (${order.join(' ')})`);
  const cells = await rows.evaluateAll((trs) => trs.map((tr) =>
    Object.fromEntries([...tr.querySelectorAll('td[data-col]')].map((td) => [td.dataset.col, { text: td.textContent, title: td.title }]))));
  const bad = [];
  g.blocks.forEach((b, i) => {
    const c = cells[i];
    const imp = g.importance.blocks.find((x) => x.block === b.block);
    for (const [col, want] of [['error', b.error], ['threshold', b.threshold], ['plain_error', b.plain_error], ['seconds', b.seconds],
      ['predicted', b.adaptive.predicted], ['actual', b.adaptive.actual], ['importance', imp.combined]])
      if (!near(c[col].text, want)) bad.push(`block ${b.block} ${col}: "${c[col].text}" vs ${want}`);
    if (c.order.text !== String(b.order) || c.bits.text !== String(b.bits)) bad.push(`block ${b.block} order/bits`);
    for (const [name, type] of Object.entries(b.types))
      if (!c.types.title.split('\n').includes(`${name}: ${type}`)) bad.push(`block ${b.block} type of ${name}`);
    if (c.trained.text !== (b.trained ? `✓ ${b.train_steps} steps` : '—')) bad.push(`block ${b.block} trained: "${c.trained.text}"`);
    if (c.recovered.text !== b.recovered.map((n) => n.replace(/^blk\.\d+\./, '').replace(/\.weight$/, '')).join(', '))
      bad.push(`block ${b.block} recovered: "${c.recovered.text}"`);
    if (c.actual.text.includes('stopped early') !== b.adaptive.stopped_early) bad.push(`block ${b.block} stopped early`);
    if (!c.attempts.text.startsWith(`${b.attempts.length} tried`)) bad.push(`block ${b.block} attempts`);
  });
  check(bad.length === 0, `every block row shows its stored results (${bad.slice(0, 5).join('; ')})`);

  // The chart plots weight × score per method, the combined score and the budget, by block index.
  const blocks = [...g.importance.blocks].sort((a, b) => a.block - b.block);
  const ds = await page.$eval('canvas#importance-chart', (c) => ({ ...c.dataset }));
  const contrib = JSON.parse(ds.contrib), combined = JSON.parse(ds.combined), threshold = JSON.parse(ds.threshold);
  const w = g.importance.weights;
  const chartOk = Number(ds.blocks) === blocks.length && blocks.every((b, i) => combined[i] === b.combined &&
    threshold[i] === b.threshold && ['rtn', 'upgrade', 'disable', 'noise'].every((m) => Math.abs(contrib[m][i] - w[m] * b[m]) < 1e-12));
  check(chartOk && await page.locator('canvas#importance-chart').isVisible(),
    `importance chart: ${blocks.length} blocks of weighted method scores, combined score and budget as stored`);

  // Heat table: one row per block, each cell the layer's chosen score.
  const heatRows = await page.locator('#layer-heat tbody tr').count();
  const heatCells = async () => page.$$eval('#layer-heat td[data-layer]', (tds) => tds.map((td) => [td.dataset.layer, td.textContent]));
  const heatMatches = (shown, score) => shown.length === g.importance.layers.length &&
    shown.every(([name, text]) => near(text, g.importance.layers.find((l) => l.name === name)[score]));
  check(heatRows === blocks.length && heatMatches(await heatCells(), 'combined'),
    `layer heat table: ${heatRows} blocks × layers of combined scores`);
  await page.selectOption('select[name=heat-score]', 'rtn');
  check(heatMatches(await heatCells(), 'rtn'), 'layer heat table switches to the RTN scores');

  // Validation summary.
  const v = g.validate;
  const vrow = (k) => page.textContent(`#gradual-validate tr[data-key="${k}"] td`);
  check(near(await vrow('kld'), v.kld) && (await vrow('bytes')).includes(`(${v.bytes} bytes)`) &&
    (await vrow('target_bytes')).includes(`(${v.target_bytes} bytes)`) && near(await vrow('bpw'), v.bpw) &&
    near(await vrow('ppl_increase'), 100 * v.ppl_increase) && (await vrow('upgrades')) === v.upgrades.join(', ') &&
    (await vrow('output')) === v.output, `validation: KLD ${v.kld}, ${v.bytes} bytes, ${v.bpw} bpw as stored`);
  await page.screenshot({ path: `${out}/gradual.png`, fullPage: true });
  await page.goto(`${base.origin}/#/jobs`);
}
