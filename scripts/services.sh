#!/usr/bin/env bash
# Make sure the services the tests use are running on this machine: PostgreSQL (127.0.0.1:5432,
# database "test"), Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672). Starts any that is not.
set -uo pipefail

log() { printf '\033[1m[services]\033[0m %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
    for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 1; done
    log "$2 did not come up on port $1"; return 1
}

if ! port_open 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    wait_port 5432 PostgreSQL
fi
if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
    log "creating database test"
    psql -h 127.0.0.1 -U postgres -d postgres -c 'create database test' >/dev/null
fi
if ! port_open 6379; then
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_port 6379 Redis
fi
if ! port_open 5672; then
    log "starting RabbitMQ"
    rabbitmq-server -detached
    wait_port 5672 RabbitMQ
fi
exit 0
