-- Recovery points: what a delete with ?backup=true removed, kept so the user
-- can undo it until expires_at. The session row, and every row of its
-- LangGraph thread as it was (bytea travels as hex in jsonb and comes back
-- byte for byte). Owned by the user, readable by no policy: only the backend
-- (the table owner) reads them, and a restore consumes them.

create table if not exists public.session_backups (
    backup_id    uuid        primary key,
    user_id      text        not null,
    business_id  text        not null,
    session_id   text        not null,
    thread_id    text        not null,
    session_row  jsonb       not null,
    created_at   timestamptz not null default now(),
    expires_at   timestamptz not null
);

create index if not exists session_backups_expires_idx on public.session_backups (expires_at);
create index if not exists session_backups_user_idx on public.session_backups (user_id);

-- One row per checkpoint row, not one value per thread: a long thread's rows
-- together could pass jsonb's size limit.
create table if not exists public.session_backup_rows (
    backup_id   uuid not null references public.session_backups (backup_id) on delete cascade,
    table_name  text not null,
    row         jsonb not null,
    constraint session_backup_rows_table_check
        check (table_name in ('checkpoints', 'checkpoint_blobs', 'checkpoint_writes'))
);

create index if not exists session_backup_rows_backup_idx on public.session_backup_rows (backup_id);

alter table public.session_backups enable row level security;
alter table public.session_backup_rows enable row level security;

-- The audit trail records restores as well as deletes. For a restore,
-- rows_deleted holds the rows put back, per table.
alter table public.session_deletions
    add column if not exists action text not null default 'delete';

do $$
begin
    if not exists (select 1 from pg_constraint where conname = 'session_deletions_action_check') then
        alter table public.session_deletions
            add constraint session_deletions_action_check check (action in ('delete', 'restore'));
    end if;
    -- Supabase's Data API roles get nothing here, whatever the default privileges say.
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke all on public.session_backups, public.session_backup_rows from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke all on public.session_backups, public.session_backup_rows from authenticated';
    end if;
end;
$$;
