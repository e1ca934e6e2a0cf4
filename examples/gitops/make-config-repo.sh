#!/bin/sh
# A sample config repo for this example: ./config-remote.git (the "remote") and ./config-repo (a working copy).
set -eu
cd "$(dirname "$0")"
rm -rf config-remote.git config-repo
git init -q --bare -b main config-remote.git
git clone -q config-remote.git config-repo 2>/dev/null
cd config-repo
git checkout -q -b main
for env in staging production; do
  for app in api web; do
    mkdir -p "k8s/$env/$app"
    cat > "k8s/$env/$app/deployment.yaml" <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $app
  namespace: $env
spec:
  replicas: 2
  template:
    spec:
      containers:
        - name: $app
          image: registry.example.com/shop/$app:1.4.1
YAML
  done
done
echo "# shop config" > README.md
git add -A
git -c user.name=example -c user.email=example@localhost commit -q -m "initial manifests"
git push -q -u origin main
echo "made $(pwd) (remote: $(cd .. && pwd)/config-remote.git)"
