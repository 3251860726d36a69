// Reads through the query service's ClickHouse HTTP interface with clickhouse-go over HTTP, the
// client and protocol of Grafana's ClickHouse datasource plugin: for each statement read from
// stdin (a JSON string per line), one JSON line with the columns, their types and the rows as text.
//
//	clickhouse-go-read <host:port> <user> <password> < statements
package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"

	"github.com/ClickHouse/clickhouse-go/v2"
)

type answer struct {
	Columns []string   `json:"columns"`
	Types   []string   `json:"types"`
	Rows    [][]string `json:"rows"`
	Error   string     `json:"error,omitempty"`
}

func main() {
	db := clickhouse.OpenDB(&clickhouse.Options{
		Addr:     []string{os.Args[1]},
		Protocol: clickhouse.HTTP,
		Auth:     clickhouse.Auth{Database: "metrics", Username: os.Args[2], Password: os.Args[3]},
	})
	defer db.Close()
	if err := db.PingContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "ping:", err)
		os.Exit(1)
	}
	lines := bufio.NewScanner(os.Stdin)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for lines.Scan() {
		var statement string
		if err := json.Unmarshal(lines.Bytes(), &statement); err != nil {
			fmt.Fprintln(os.Stderr, "a line is not a JSON string:", err)
			os.Exit(1)
		}
		if err := out.Encode(read(db, statement)); err != nil {
			fmt.Fprintln(os.Stderr, "encode:", err)
			os.Exit(1)
		}
	}
}

func read(db *sql.DB, statement string) answer {
	rows, err := db.QueryContext(context.Background(), statement)
	if err != nil {
		return answer{Error: err.Error()}
	}
	defer rows.Close()
	types, err := rows.ColumnTypes()
	if err != nil {
		return answer{Error: err.Error()}
	}
	result := answer{Rows: [][]string{}}
	for _, column := range types {
		result.Columns = append(result.Columns, column.Name())
		result.Types = append(result.Types, column.DatabaseTypeName())
	}
	for rows.Next() {
		values := make([]any, len(types))
		pointers := make([]any, len(types))
		for i := range values {
			pointers[i] = &values[i]
		}
		if err := rows.Scan(pointers...); err != nil {
			return answer{Error: err.Error()}
		}
		text := make([]string, len(values))
		for i, value := range values {
			text[i] = fmt.Sprint(value)
		}
		result.Rows = append(result.Rows, text)
	}
	if err := rows.Err(); err != nil {
		result.Error = err.Error()
	}
	return result
}
