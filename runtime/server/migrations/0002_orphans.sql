-- Rows that outlived their project. Before this version a grant, a secret
-- or an event written while its project was being deleted could survive
-- the deletion, and the next project created with that id, perhaps another
-- tenant's, inherited it: its grantee administered the new project and its
-- secrets were the new project's. Every such write now takes the project's
-- lock (store.rs, lock_project); this removes what the race left behind.
-- Project roles scoped `*` belong to no one project and stay.
DELETE FROM role_assignments
WHERE role IN ('PROJECT_ADMIN', 'PROJECT_DEVELOPER', 'PROJECT_USER') AND scope <> '*'
  AND scope NOT IN (SELECT id FROM projects);
DELETE FROM secrets WHERE project_id NOT IN (SELECT id FROM projects);
DELETE FROM logs
WHERE event_id IN (SELECT id FROM events WHERE project_id NOT IN (SELECT id FROM projects));
DELETE FROM jobs
WHERE event_id IN (SELECT id FROM events WHERE project_id NOT IN (SELECT id FROM projects));
DELETE FROM events WHERE project_id NOT IN (SELECT id FROM projects);
