// Reads the embedded store through the query service's ClickHouse HTTP interface with the
// official client: node read.mjs <url> <project> <read key>; prints what it read as JSON.
import { createClient } from '@clickhouse/client';

const [url, username, password] = process.argv.slice(2);
const client = createClient({ url, username, password, compression: { response: true } });
try {
  const ping = await client.ping();
  const projects = await (await client.query({
    query: 'SELECT DISTINCT project FROM metrics.events ORDER BY project',
    format: 'JSONEachRow',
  })).json();
  const count = await (await client.query({
    query: 'SELECT count() AS n FROM metrics.events',
    format: 'JSON',
  })).json();
  const param = await (await client.query({
    query: 'SELECT {s: String} AS s',
    query_params: { s: "a'b" },
    format: 'JSONEachRow',
  })).json();
  const streamed = await client.query({ query: 'SELECT number FROM numbers(10000)', format: 'JSONCompactEachRow' });
  let rows = 0;
  for await (const batch of streamed.stream()) rows += batch.length;
  console.log(JSON.stringify({
    ping: ping.success,
    projects: projects.map((row) => row.project),
    count: Number(count.data[0].n),
    param: param[0].s,
    streamed: rows,
  }));
} finally {
  await client.close();
}
